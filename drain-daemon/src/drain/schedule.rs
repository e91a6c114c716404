//! Pacing: how many idle connections the drain may close now.
//!
//! Closing every idle keep-alive connection at once sends all their clients to reconnect
//! in the same instant, a storm for the successor or the peer fleet. Like the best
//! proxies (Envoy's gradual drain) and Phoenix's SocketDrano, the drain spreads closes
//! out, in one of two ways:
//!
//! - [`Pace::Spread`]: the idle connections are closed evenly over a window. Whatever is
//!   waiting is spread over what is left of the window, so connections that become idle
//!   later are closed promptly within the remaining schedule; after the window, at once.
//! - [`Pace::Batches`]: a share of the connections idle at the start is closed every
//!   interval (SocketDrano's percentage strategy); later idle ones join the next batch.
//!
//! Fractions carry over between passes, so a few connections over a long window are
//! closed one by one at even gaps rather than all in the first pass. The first close is
//! due at once: a lone idle connection does not wait for the end of the window.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::duration_ms;

/// How long [`Pace::Auto`] spreads each connection idle at the start: 100 closes a
/// second at most, until the window reaches its cap.
pub const AUTO_WINDOW_PER_CONNECTION: Duration = Duration::from_millis(10);

/// How closes are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// Close the idle connections evenly over this window (zero: all at once).
    Spread(#[serde(with = "duration_ms")] Duration),
    /// A spread whose window fits the load: [`AUTO_WINDOW_PER_CONNECTION`] for each
    /// connection idle at the first pass that finds any, at most `max_window`. A few connections close
    /// almost at once; thousands are spread out.
    Auto {
        #[serde(with = "duration_ms", rename = "max_window_ms")]
        max_window: Duration,
    },
    /// Close `percent` of the connections idle at the start every `interval`.
    Batches {
        percent: u8,
        #[serde(with = "duration_ms", rename = "interval_ms")]
        interval: Duration,
    },
}

/// The close budget of one drain.
#[derive(Debug)]
pub struct CloseSchedule {
    pace: Pace,
    started: Instant,
    last: Instant,
    /// Fraction of a close earned but not yet spent ([`Pace::Spread`]).
    credit: f64,
    /// Connections per batch, fixed at the first batch ([`Pace::Batches`]).
    batch_size: Option<usize>,
    next_batch: Instant,
}

impl CloseSchedule {
    pub fn new(pace: Pace, started: Instant) -> Self {
        Self {
            pace,
            started,
            last: started,
            credit: 1.0,
            batch_size: None,
            next_batch: started,
        }
    }

    /// How many of the `waiting` idle connections may be closed at `now`.
    pub fn allowance(&mut self, now: Instant, waiting: usize) -> usize {
        if let Pace::Auto { max_window } = self.pace {
            // Fitted to the first connections that become idle, whenever that is.
            if waiting == 0 {
                self.last = now;
                return 0;
            }
            self.started = now;
            let fitted =
                AUTO_WINDOW_PER_CONNECTION.saturating_mul(waiting.try_into().unwrap_or(u32::MAX));
            self.pace = Pace::Spread(fitted.min(max_window));
        }
        let since_last = now.saturating_duration_since(self.last);
        self.last = now;
        match self.pace {
            Pace::Spread(window) | Pace::Auto { max_window: window } => {
                let left = (self.started + window).saturating_duration_since(now);
                if left.is_zero() {
                    self.credit = 0.0;
                    return waiting;
                }
                // Spread what waits over what is left of the window (this pass included).
                let share = since_last.as_secs_f64() / (left + since_last).as_secs_f64();
                self.credit += waiting as f64 * share;
                let allowed = (self.credit.floor() as usize).min(waiting);
                self.credit -= allowed as f64;
                if waiting == 0 {
                    // Nothing waited: the earned share is not saved up for a later burst.
                    self.credit = self.credit.min(1.0);
                }
                allowed
            }
            Pace::Batches { percent, interval } => {
                if waiting == 0 || now < self.next_batch {
                    return 0;
                }
                let size = *self
                    .batch_size
                    .get_or_insert_with(|| (waiting * usize::from(percent)).div_ceil(100).max(1));
                self.next_batch = now + interval;
                size.min(waiting)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Runs a schedule in 100 ms passes over `waiting` connections that are all idle
    /// from the start; returns how many were closed in each pass.
    fn run(pace: Pace, mut waiting: usize, passes: usize) -> Vec<usize> {
        let start = Instant::now();
        let mut schedule = CloseSchedule::new(pace, start);
        (1..=passes)
            .map(|pass| {
                let closed = schedule.allowance(start + 100 * MS * pass as u32, waiting);
                waiting -= closed;
                closed
            })
            .collect()
    }

    #[test]
    fn spread_closes_evenly_over_the_window() {
        let per_pass = run(Pace::Spread(2000 * MS), 1000, 20);
        assert_eq!(per_pass.iter().sum::<usize>(), 1000);
        assert!(
            per_pass.iter().all(|&n| (45..=55).contains(&n)),
            "{per_pass:?}"
        );
    }

    #[test]
    fn spread_closes_a_few_connections_at_even_gaps() {
        let per_pass = run(Pace::Spread(3000 * MS), 3, 30);
        let passes: Vec<usize> = per_pass
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(pass, _)| pass + 1)
            .collect();
        assert_eq!(passes.len(), 3, "{per_pass:?}");
        assert_eq!(passes[0], 1, "the first close is due at once: {per_pass:?}");
        let gaps = [passes[1] - passes[0], passes[2] - passes[1]];
        assert!(
            gaps.iter().all(|gap| (8..=16).contains(gap)),
            "even gaps: {per_pass:?}"
        );
    }

    #[test]
    fn after_the_window_everything_waiting_goes_at_once() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::new(Pace::Spread(1000 * MS), start);
        assert_eq!(schedule.allowance(start + 1500 * MS, 40), 40);
        let mut zero = CloseSchedule::new(Pace::Spread(Duration::ZERO), start);
        assert_eq!(zero.allowance(start, 7), 7);
    }

    #[test]
    fn connections_idle_later_are_spread_over_what_is_left() {
        let start = Instant::now();
        let mut schedule = CloseSchedule::new(Pace::Spread(2000 * MS), start);
        // Nothing idle for the first second, then 100 at once.
        for pass in 1..=10 {
            assert_eq!(schedule.allowance(start + 100 * MS * pass, 0), 0);
        }
        let mut waiting = 100;
        let mut per_pass = Vec::new();
        for pass in 11..=20 {
            let closed = schedule.allowance(start + 100 * MS * pass, waiting);
            waiting -= closed;
            per_pass.push(closed);
        }
        assert_eq!(
            waiting, 0,
            "all closed by the end of the window: {per_pass:?}"
        );
        assert!(per_pass.iter().all(|&n| n <= 12), "no burst: {per_pass:?}");
    }

    #[test]
    fn auto_fits_the_window_to_the_connections_idle_at_the_start() {
        let cap = Pace::Auto {
            max_window: 10_000 * MS,
        };
        // 3 connections: a 30 ms window, all closed by the first pass after it.
        assert_eq!(run(cap, 3, 1).iter().sum::<usize>(), 3);
        // 1000 connections: 10 s window (the cap), 10 per 100 ms pass.
        let per_pass = run(cap, 1000, 20);
        assert!(
            per_pass.iter().skip(1).all(|&n| (9..=11).contains(&n)),
            "{per_pass:?}"
        );
    }

    #[test]
    fn batches_close_a_share_of_the_initial_set_every_interval() {
        let per_pass = run(
            Pace::Batches {
                percent: 25,
                interval: 300 * MS,
            },
            10,
            12,
        );
        // 3 per batch (25 % of 10, rounded up), every third pass from the first.
        assert_eq!(per_pass, vec![3, 0, 0, 3, 0, 0, 3, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn a_batch_is_at_least_one_connection() {
        let per_pass = run(
            Pace::Batches {
                percent: 1,
                interval: 100 * MS,
            },
            3,
            4,
        );
        assert_eq!(per_pass, vec![1, 1, 1, 0]);
    }
}

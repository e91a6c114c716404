//! The paced executor: closes what a pass's policies chose ([`super::policy`]), as many
//! as the close schedule allows now, spread over the time to the next pass.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    policy::{Due, Seen},
    report::Tally,
    schedule::CloseSchedule,
    Pace,
};
use crate::{
    close::{close_when, CloseOutcome, When},
    inventory::{Connection, Inventory, Rhythm},
};

/// A sleep between two closes costs a system call and a wake-up that is late by tens of
/// microseconds or more: closes due closer together than this are made in groups, one
/// group per tick.
const CLOSE_TICK: Duration = Duration::from_millis(1);

/// How a drain's closes are spread out: over the drain by its schedule, and within a
/// pass over `close_over`.
pub(super) struct Pacer {
    schedule: CloseSchedule,
    /// A spread's closes are paced within each pass too, over the time to the next one,
    /// so slow passes do not turn into bursts; a batch is closed at once.
    close_over: Option<Duration>,
    deadline: Instant,
}

impl Pacer {
    pub(super) fn new(pace: Pace, poll_interval: Duration, deadline: Instant) -> Self {
        let paced_within_pass = match pace {
            Pace::Spread(window) => !window.is_zero(),
            Pace::Auto { .. } => true,
            Pace::Batches { .. } => false,
        };
        Pacer {
            schedule: CloseSchedule::new(pace, Instant::now()),
            close_over: paced_within_pass.then_some(poll_interval),
            deadline,
        }
    }

    /// Closes the connections the schedule allows now, in the order given, evenly over
    /// the pass when paced within it, stopping at the deadline; returns the cookies of
    /// those closed.
    pub(super) fn close(
        &mut self,
        inventory: &mut Inventory,
        seen: Seen<'_>,
        due: Vec<Due<'_>>,
        tally: &mut Tally,
    ) -> HashSet<u64> {
        let allowed = self.schedule.allowance(Instant::now(), due.len());
        let gap = self
            .close_over
            .map_or(Duration::ZERO, |over| over / allowed.max(1) as u32);
        let per_tick = if gap.is_zero() {
            usize::MAX
        } else {
            (CLOSE_TICK.as_nanos() / gap.as_nanos()).max(1) as usize
        };
        let mut closed = HashSet::new();
        for (i, (connection, when)) in due.into_iter().take(allowed).enumerate() {
            if i > 0 && i % per_tick == 0 {
                // On a blocking thread ([`super::blocking::run`]): this sleep holds no
                // worker.
                std::thread::sleep(gap * per_tick as u32);
            }
            if Instant::now() >= self.deadline {
                break;
            }
            match close_when(inventory, connection, when) {
                Ok(CloseOutcome::Closed(method)) => {
                    let at_boundary = matches!(when, When::AtBoundary { .. });
                    let client_pause_ms = seen
                        .rhythms
                        .of(connection)
                        .and_then(Rhythm::pause)
                        .map(|pause| pause.as_millis());
                    debug!(peer = %connection.socket.id.remote, ?method, at_boundary, ?client_pause_ms, "closed a connection");
                    tally.closed(connection, method, at_boundary);
                    closed.insert(connection.socket.id.cookie);
                }
                Ok(CloseOutcome::AlreadyClosed) => {}
                Ok(CloseOutcome::BecameBusy(busy)) => {
                    debug!(peer = %connection.socket.id.remote, %busy, "a request arrived; leaving it to finish");
                }
                Err(err) => {
                    warn!(peer = %connection.socket.id.remote, "cannot close a connection: {err}")
                }
            }
        }
        if !closed.is_empty() {
            let left = |c: &&Connection| !closed.contains(&c.socket.id.cookie);
            info!(
                closed = closed.len(),
                idle_left = seen.snapshot.idle().filter(left).count(),
                in_flight = seen.snapshot.in_flight().filter(left).count(),
                "closed a batch of connections"
            );
        }
        closed
    }
}

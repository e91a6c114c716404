//! Durations: how people and service managers write them, and the range each of a
//! drain's durations must stay in.
//!
//! Every duration option takes the same spellings: humantime's, which are systemd's
//! (`30s`, `500ms`, `1min`, `90sec`, `1.5s`, `2 minutes`, `1h 30m`), and a bare number of
//! seconds (`45`, `1.5`), which drainctl always took.
//!
//! The limits exist because a drain adds its durations to `Instant::now()`, which panics
//! on overflow (`--timeout 18446744073709551615` did), and because a zero scan interval
//! busy-loops a core. The command line checks each option as it parses it, so the error
//! names the option; the daemon checks every plan a client sends with [`check_plan`], so
//! nothing the command line refuses reaches a drain by another way.

use std::time::Duration;

use crate::drain::{DrainPlan, Pace};

/// The longest any duration may be: far beyond any service manager's stop timeout, far
/// below an `Instant` overflow.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The range one duration setting must stay in, and the option that sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The command-line option, which error messages name.
    pub option: &'static str,
    pub min: Duration,
    pub max: Duration,
}

pub const TIMEOUT: Limit = Limit::up_to_a_day("--timeout", Duration::ZERO);
/// Below 10 ms scanning is a busy loop that takes the CPU the server needs to finish
/// its requests; more than a minute between scans would only make drains end late.
pub const POLL_INTERVAL: Limit = Limit {
    option: "--poll-interval",
    min: Duration::from_millis(10),
    max: Duration::from_secs(60),
};
pub const QUIET_PERIOD: Limit = Limit::up_to_a_day("--quiet-period", Duration::ZERO);
pub const CLOSE_GRACE: Limit = Limit::up_to_a_day("--close-grace", Duration::ZERO);
pub const SPREAD: Limit = Limit::up_to_a_day("--spread", Duration::ZERO);
/// A batch every 0 s is a busy loop, as for [`POLL_INTERVAL`].
pub const INTERVAL: Limit = Limit::up_to_a_day("--interval", Duration::from_millis(10));
pub const ACCEPT_GRACE: Limit = Limit::up_to_a_day("--accept-grace", Duration::ZERO);
pub const KEEP_REFUSING: Limit = Limit::up_to_a_day("--keep-refusing", Duration::ZERO);

/// Why a duration was refused. Messages are meant to follow the option's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (write e.g. 30s, 500ms, 1min or 1m30s)")]
    Empty,
    #[error("durations cannot be negative")]
    Negative,
    #[error("{reason} (write e.g. 30s, 500ms, 1min, 1.5s, 1m30s or a number of seconds)")]
    Invalid { reason: String },
    #[error("shorter than the minimum of {}", humantime::format_duration(*.min))]
    TooShort { value: Duration, min: Duration },
    #[error("longer than the maximum of {}", humantime::format_duration(*.max))]
    TooLong { value: Duration, max: Duration },
}

/// Parses a duration in any of the spellings of the module documentation, with no
/// range check (see [`Limit::parse`]).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    // A bare number is seconds, as drainctl always took it; humantime wants a unit.
    let with_unit;
    let text = if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        with_unit = format!("{text}s");
        &with_unit
    } else {
        text
    };
    humantime::parse_duration(text).map_err(|err| DurationError::Invalid {
        reason: err.to_string(),
    })
}

impl Limit {
    const fn up_to_a_day(option: &'static str, min: Duration) -> Limit {
        Limit {
            option,
            min,
            max: DAY,
        }
    }

    /// `value` if it lies in the range.
    pub fn check(&self, value: Duration) -> Result<Duration, DurationError> {
        if value < self.min {
            Err(DurationError::TooShort {
                value,
                min: self.min,
            })
        } else if value > self.max {
            Err(DurationError::TooLong {
                value,
                max: self.max,
            })
        } else {
            Ok(value)
        }
    }

    /// [`parse`], then [`Limit::check`]: the value parser of the option.
    pub fn parse(&self, text: &str) -> Result<Duration, DurationError> {
        parse(text).and_then(|value| self.check(value))
    }
}

/// Why a drain plan (from a client of the daemon) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{option}: {source}")]
    Duration {
        option: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("{option}: 0 is not a port (1-65535)")]
    PortZero { option: &'static str },
    #[error("--batch: {0} is not a percentage of 1-100")]
    Percent(u8),
    #[error("--pid: {0} is not a process id")]
    Pid(i32),
    #[error("--successor-port: {0} is the drained port itself: name the port of the listener that takes over (or leave the option out to hand over on the same port)")]
    SuccessorIsDrainedPort(u16),
}

/// Checks every setting of `plan` against the limits the command line applies.
pub fn check_plan(plan: &DrainPlan) -> Result<(), PlanError> {
    let check = |limit: Limit, value: Duration| {
        limit
            .check(value)
            .map(drop)
            .map_err(|source| PlanError::Duration {
                option: limit.option,
                source,
            })
    };
    if plan.port == 0 {
        return Err(PlanError::PortZero { option: "--port" });
    }
    if let Some(pid) = plan.pid.filter(|pid| *pid <= 0) {
        return Err(PlanError::Pid(pid));
    }
    match plan.successor_port {
        Some(0) => {
            return Err(PlanError::PortZero {
                option: "--successor-port",
            })
        }
        Some(successor) if successor == plan.port => {
            return Err(PlanError::SuccessorIsDrainedPort(successor))
        }
        _ => {}
    }
    check(TIMEOUT, plan.timeout)?;
    check(POLL_INTERVAL, plan.poll_interval)?;
    check(QUIET_PERIOD, plan.quiet_period)?;
    check(CLOSE_GRACE, plan.close_grace)?;
    check(KEEP_REFUSING, plan.keep_refusing)?;
    check(ACCEPT_GRACE, plan.accept_grace)?;
    match plan.pace {
        Pace::Spread(window) | Pace::Auto { max_window: window } => check(SPREAD, window),
        Pace::Batches { percent, interval } => {
            if !(1..=100).contains(&percent) {
                return Err(PlanError::Percent(percent));
            }
            check(INTERVAL, interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let secs = Duration::from_secs;
        for (text, expected) in [
            ("30s", secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", secs(120)),
            ("1m30s", secs(90)),
            ("1h", secs(3600)),
            ("45", secs(45)),
            (" 45 ", secs(45)),
            ("1.5", Duration::from_millis(1500)),
            ("1min", secs(60)),
            ("90sec", secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("2 minutes", secs(120)),
            ("1h 30m", secs(5400)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn bad_spellings_say_why() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        assert_eq!(parse("-5"), Err(DurationError::Negative));
        for bad in ["s", "10x", "1.5.1", "soon", "99999999999999999999"] {
            let err = parse(bad).unwrap_err();
            assert!(
                matches!(err, DurationError::Invalid { .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn limits_bound_what_overflows_or_busy_loops() {
        let huge = TIMEOUT.parse("18446744073709551615").unwrap_err();
        assert_eq!(huge.to_string(), "longer than the maximum of 1day");
        assert!(TIMEOUT.parse("1d").is_ok());
        assert!(TIMEOUT.parse("25h").is_err());
        assert_eq!(
            POLL_INTERVAL.parse("0s").unwrap_err().to_string(),
            "shorter than the minimum of 10ms"
        );
        assert!(POLL_INTERVAL.parse("10ms").is_ok());
        assert!(INTERVAL.parse("1ms").is_err());
        assert!(SPREAD.parse("0s").is_ok());
    }

    fn plan() -> DrainPlan {
        DrainPlan {
            port: 8080,
            timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            quiet_period: Duration::from_secs(1),
            close_grace: Duration::from_secs(2),
            pace: Pace::Auto {
                max_window: Duration::from_secs(10),
            },
            force: false,
            accept_grace: Duration::ZERO,
            pid: None,
            successor_port: None,
            no_connection_close: false,
            websocket_close: false,
            keep_refusing: crate::drain::DEFAULT_KEEP_REFUSING,
        }
    }

    #[test]
    fn plans_from_clients_get_the_same_limits() {
        assert_eq!(check_plan(&plan()), Ok(()));
        let bad = [
            DrainPlan {
                timeout: Duration::from_millis(u64::MAX),
                ..plan()
            },
            DrainPlan {
                poll_interval: Duration::ZERO,
                ..plan()
            },
            DrainPlan { port: 0, ..plan() },
            DrainPlan {
                pid: Some(0),
                ..plan()
            },
            DrainPlan {
                successor_port: Some(0),
                ..plan()
            },
            DrainPlan {
                successor_port: Some(8080),
                ..plan()
            },
            DrainPlan {
                pace: Pace::Batches {
                    percent: 0,
                    interval: Duration::from_secs(1),
                },
                ..plan()
            },
            DrainPlan {
                pace: Pace::Spread(Duration::MAX),
                ..plan()
            },
        ];
        for plan in bad {
            assert!(check_plan(&plan).is_err(), "{plan:?}");
        }
        let err = check_plan(&DrainPlan {
            poll_interval: Duration::ZERO,
            ..plan()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--poll-interval: shorter than the minimum of 10ms"
        );
    }
}

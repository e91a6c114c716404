//! Exit codes, and the one place a failure's blame becomes one.
//!
//! Errors say themselves whether the machine or the target is not as required
//! ([`DrainError::is_environment`]); [`Blame`] is that answer, turned into `drainctl`'s
//! exit code here and into the daemon's error reply by the control API, so the two
//! cannot disagree about the same error.

use std::process::ExitCode;

use crate::drain::DrainError;

/// Exit codes of `drainctl` (documented in the README), and those `drain-daemon` uses
/// for the same classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The port is drained: nothing of the old listener is left.
    Drained = 0,
    /// The deadline passed with connections still open (listed on stdout).
    Remaining = 1,
    /// Bad arguments (also what clap uses).
    Usage = 2,
    /// The machine or the target is not as required: no listener, not root, kernel
    /// without sk_lookup.
    Environment = 3,
    /// Anything else: an unexpected system error (the message says which call).
    Failure = 4,
    /// Interrupted by SIGINT before the drain finished (128 + 2, as shells report it).
    Interrupted = 130,
    /// Stopped by SIGTERM before the drain finished (128 + 15).
    Terminated = 143,
}

impl Exit {
    /// The class of a failed command as `--json` names it (`error.kind`, README "Exit
    /// codes"); `None` for the codes that are a drain's outcome, not an error.
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            Exit::Usage => Some("usage"),
            Exit::Environment => Some("environment"),
            Exit::Failure => Some("failure"),
            Exit::Drained | Exit::Remaining | Exit::Interrupted | Exit::Terminated => None,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// Who a failed drain or release is owed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The target or the machine is not as required: the user can act on it (exit 3).
    Environment,
    /// Anything else (exit 4).
    Tool,
}

impl Blame {
    pub fn of(err: &DrainError) -> Self {
        if err.is_environment() {
            Blame::Environment
        } else {
            Blame::Tool
        }
    }
}

impl From<Blame> for Exit {
    fn from(blame: Blame) -> Self {
        match blame {
            Blame::Environment => Exit::Environment,
            Blame::Tool => Exit::Failure,
        }
    }
}

/// A failed command: its exit code and a one-line message.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: String) -> Self {
        Failure { exit, message }
    }

    pub fn usage(message: String) -> Self {
        Failure::new(Exit::Usage, message)
    }

    /// A failed drain or release, with the exit code its blame gives.
    pub fn of(err: &DrainError) -> Self {
        Failure::new(Blame::of(err).into(), err.to_string())
    }
}

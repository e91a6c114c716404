//! What `drainctl` and `drain-daemon` share as programs, not as drain logic: their exit
//! codes and how a failure is blamed ([`exit`]), and where their log goes ([`logging`],
//! journald for the daemon under systemd: [`journal`]).

pub mod exit;
pub mod journal;
pub mod logging;

pub use self::exit::{Blame, Exit, Failure};

//! The drain's end: the last counts, the observer told, the refusal kept for the
//! server's stop or released, and the report.

use std::time::Duration;

use tracing::warn;

use super::{Cancel, Drain, DrainObserver, DrainReport, Outcome, ProcessRef};
use crate::steer::{Expiry, Persistence};

/// What becomes of the refusal of new connections after the drain.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The drain was aborted, the service goes on: new connections are accepted again.
    Abort,
    /// The refusal lives in this process only, and ends with it.
    EndsWithProcess,
    /// The server's stop comes next: new connections stay refused until the draining
    /// listeners close, at most `keep_refusing` from now.
    Keep,
    /// Every draining listener is gone (the server exited, or its namespace is going),
    /// or the refusal is to end with the drain (`--keep-refusing 0s`): the pins refuse
    /// nothing any more, and in a deleted namespace nothing would ever reuse them.
    /// Removed now rather than at the next sweep.
    Release,
}

impl Refusal {
    fn after(
        cancel: Option<Cancel>,
        outlives_process: bool,
        open_listeners: usize,
        keep_refusing: Duration,
    ) -> Refusal {
        match cancel {
            Some(Cancel::Abort) => Refusal::Abort,
            _ if !outlives_process => Refusal::EndsWithProcess,
            _ if open_listeners > 0 && !keep_refusing.is_zero() => Refusal::Keep,
            _ => Refusal::Release,
        }
    }
}

impl Drain<'_> {
    /// Ends the drain with `outcome` (`cancel`: how, when it was cancelled).
    pub(super) fn finish(
        mut self,
        outcome: Outcome,
        cancel: Option<Cancel>,
        observer: &mut impl DrainObserver,
    ) -> DrainReport {
        let plan = self.plan;
        let refused_connections = self.steering.refused_connections();
        self.tally.steered = self.steering.steered_connections();
        self.policies.report(&mut self.tally);
        self.tally.client_pauses = self
            .last
            .connections
            .iter()
            .filter_map(|c| Some((c.socket.id.cookie, self.rhythms.of(c)?.pause()?)))
            .collect();
        observer.finished(outcome, refused_connections, self.tally.steered);
        let pinned_at = match self.steering.persistence() {
            Persistence::Pinned(dir) => Some(dir.display().to_string()),
            Persistence::Held(_) | Persistence::Process => None,
        };
        let held_by = match self.steering.persistence() {
            Persistence::Held(pid) => Some(*pid),
            Persistence::Pinned(_) | Persistence::Process => None,
        };
        let refusal = Refusal::after(
            cancel,
            self.steering.persistence().outlives_process(),
            self.steering.open_listeners(),
            plan.keep_refusing,
        );
        let still_refusing = match refusal {
            Refusal::Abort => {
                if let Err(err) = self.steering.release() {
                    warn!("could not stop refusing new connections: {err}");
                }
                false
            }
            Refusal::EndsWithProcess => false,
            Refusal::Keep => {
                // A server that keeps running gets its new connections again this long
                // after the drain.
                if let Err(err) = self.steering.end_by(Expiry::after(plan.keep_refusing)) {
                    warn!("could not set when the refusal ends: {err}");
                }
                true
            }
            Refusal::Release => {
                if let Err(err) = self.steering.release() {
                    warn!("could not remove the pins of a drain whose listeners are gone: {err}");
                }
                false
            }
        };
        let mut report = self.tally.report(
            plan.port,
            outcome,
            self.started,
            &self.last,
            refused_connections,
            pinned_at.filter(|_| still_refusing),
        );
        report.listener_kept_by = self.keepers.into_iter().map(ProcessRef::from).collect();
        report.still_refusing = still_refusing;
        if still_refusing {
            report.refusal_held_by = held_by;
            report.refusal_ends_within_ms = plan
                .keep_refusing
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX);
        }
        report.successors = self.successors.len().try_into().unwrap_or(u32::MAX);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(90);

    #[test]
    fn an_aborted_drain_stops_refusing_whatever_else_holds() {
        assert_eq!(
            Refusal::after(Some(Cancel::Abort), true, 1, KEEP),
            Refusal::Abort
        );
        assert_eq!(
            Refusal::after(Some(Cancel::Abort), false, 0, KEEP),
            Refusal::Abort
        );
    }

    #[test]
    fn a_refusal_held_by_the_drain_alone_ends_with_it() {
        assert_eq!(
            Refusal::after(None, false, 1, KEEP),
            Refusal::EndsWithProcess
        );
        assert_eq!(
            Refusal::after(Some(Cancel::Stop), false, 1, KEEP),
            Refusal::EndsWithProcess
        );
    }

    #[test]
    fn a_refusal_is_kept_for_the_stop_while_the_listeners_are_open() {
        assert_eq!(Refusal::after(None, true, 1, KEEP), Refusal::Keep);
        assert_eq!(
            Refusal::after(Some(Cancel::Stop), true, 2, KEEP),
            Refusal::Keep
        );
    }

    #[test]
    fn a_refusal_is_released_when_its_listeners_are_gone_or_keep_refusing_is_zero() {
        assert_eq!(Refusal::after(None, true, 0, KEEP), Refusal::Release);
        assert_eq!(
            Refusal::after(None, true, 1, Duration::ZERO),
            Refusal::Release
        );
    }
}

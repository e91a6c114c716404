//! One pass of the drain: scan the port (a failed scan is tried again, a few times),
//! update the successors, learn from the scan, run the close policies, close what they
//! chose, and tell the observer.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    blocking,
    paced::Pacer,
    policy::{Due, Policies, Seen, Step},
    report::Tally,
    successors::{update_successors, SuccessorsAre},
    Drain, DrainError, DrainObserver, Outcome, Progress,
};
use crate::{
    close::send_fin,
    inventory::{Connection, Inventory},
    steer::{Persistence, Steering},
};

/// What comes after a pass.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Another pass, after this long (unless cancelled meanwhile).
    Next(Duration),
    /// The drain is over.
    Ended(Outcome),
}

impl Drain<'_> {
    pub(super) async fn pass(
        &mut self,
        observer: &mut impl DrainObserver,
    ) -> Result<Pass, DrainError> {
        let port = self.plan.port;
        let pass_started = Instant::now();
        // The kernel reads TCP_INFO's "ms ago" stamps at the start of the scan: the owner
        // search that follows can take tens of milliseconds.
        let Some((probe, scanned_at, scanned)) =
            blocking::scan_by(&mut self.scanner, self.deadline).await
        else {
            info!(
                port,
                "the port's scan was still running a second after the deadline (a system call stuck); the report shows the pass before"
            );
            return Ok(Pass::Ended(Outcome::DeadlineReached));
        };
        let scan = match scanned {
            Ok(scan) => {
                self.scan_budget.succeeded();
                scan
            }
            // A dump can fail once (ENOBUFS under memory pressure, a timeout on a loaded
            // host) and work at the next pass: the drain goes on, the refusal holds.
            Err(err) => match self.scan_budget.failed(Instant::now() < self.deadline) {
                Ok(attempt) => {
                    warn!(
                        port,
                        attempt,
                        "reading the port's sockets failed ({err}); trying again at the next pass"
                    );
                    return Ok(Pass::Next(jittered(self.plan.poll_interval)));
                }
                Err(attempts) => {
                    observer.failed(
                        self.steering.refused_connections(),
                        self.steering.steered_connections(),
                    );
                    return Err(DrainError::ScanFailed {
                        port,
                        attempts,
                        source: err,
                        left: left_behind(&self.steering, self.tally.closed_total()),
                    });
                }
            },
        };
        blocking::run(|| {
            update_successors(
                &mut self.steering,
                port,
                &scan.listeners,
                SuccessorsAre::from_plan(self.plan, probe.ownership.listeners(), self.scope),
                &mut self.successors,
            )
        });
        self.tally.unknown_owner = probe.ownership.unknown_owner();
        let snapshot = scan.ours;
        self.tally.observe(&snapshot);
        self.rhythms.observe(&snapshot, scanned_at);
        blocking::run(|| self.policies.prepare(&snapshot));
        if snapshot.connections.is_empty() && snapshot.accept_queue() == 0 {
            self.last = snapshot;
            return Ok(Pass::Ended(Outcome::Drained));
        }
        let now = Instant::now();
        let seen = Seen {
            snapshot: &snapshot,
            rhythms: &self.rhythms,
        };
        let closed_now = blocking::run(|| {
            close(
                &mut self.policies,
                &mut self.pacer,
                &mut self.tally,
                seen,
                &mut probe.inventory,
            )
        });
        let still_open = |c: &&Connection| !closed_now.contains(&c.socket.id.cookie);
        observer.progress(&Progress {
            elapsed_ms: (now - self.started).as_millis() as u64,
            time_left_ms: self.deadline.saturating_duration_since(now).as_millis() as u64,
            idle: snapshot.idle().filter(still_open).count(),
            in_flight: snapshot.in_flight().filter(still_open).count(),
            accept_queue: snapshot.accept_queue(),
            closed: self.tally.closed_total(),
            refused: self.steering.refused_connections(),
            steered: self.steering.steered_connections(),
        });
        self.last = snapshot;
        if now >= self.deadline {
            self.last
                .connections
                .retain(|c| !closed_now.contains(&c.socket.id.cookie));
            return Ok(Pass::Ended(Outcome::DeadlineReached));
        }
        Ok(Pass::Next(
            jittered(self.plan.poll_interval).saturating_sub(pass_started.elapsed()),
        ))
    }
}

/// Runs the close policies over the pass's scan: their FINs go out at once, their closes
/// through the paced executor. The cookies of the connections closed.
fn close(
    policies: &mut Policies,
    pacer: &mut Pacer,
    tally: &mut Tally,
    seen: Seen<'_>,
    inventory: &mut Inventory,
) -> HashSet<u64> {
    let mut due: Vec<Due<'_>> = Vec::new();
    for step in policies.choose(seen, &tally.asked_at) {
        match step {
            Step::Close(close) => due.push(close),
            Step::Fin(connection) => fin(inventory, connection),
        }
    }
    pacer.close(inventory, seen, due, tally)
}

/// Sends the FIN of a connection whose server kept it open after EOF.
fn fin(inventory: &mut Inventory, connection: &Connection) {
    match send_fin(inventory, connection) {
        Ok(true) => {
            info!(peer = %connection.socket.id.remote, "the server kept an idle connection open after EOF; sent its FIN")
        }
        Ok(false) => {}
        Err(err) => {
            warn!(peer = %connection.socket.id.remote, "cannot send a FIN: {err}")
        }
    }
}

/// Passes in a row whose scan may fail before the drain gives up (with the default poll
/// interval, about half a second of failures).
const MAX_FAILED_SCANS: u32 = 5;

/// The scans that failed in a row.
#[derive(Debug, Default)]
pub(super) struct ScanBudget {
    failed: u32,
}

impl ScanBudget {
    pub(super) fn succeeded(&mut self) {
        self.failed = 0;
    }

    /// One more scan failed: `Ok` with its attempt number when the next pass may try
    /// again (the budget is not spent and `before_deadline`), else `Err` with the
    /// attempts made.
    pub(super) fn failed(&mut self, before_deadline: bool) -> Result<u32, u32> {
        if self.failed + 1 < MAX_FAILED_SCANS && before_deadline {
            self.failed += 1;
            Ok(self.failed)
        } else {
            Err(self.failed + 1)
        }
    }
}

/// What a drain that failed midway leaves behind, said so the user can act on it.
fn left_behind(steering: &Steering, closed: u64) -> String {
    let refusal = match steering.persistence() {
        Persistence::Pinned(dir) if steering.open_listeners() > 0 => format!(
            "new connections to port {port} stay refused until its listener closes, at most --keep-refusing after the drain's timeout (pinned at {}; `drainctl release --port {port}` ends it now)",
            dir.display(),
            port = steering.port()
        ),
        Persistence::Held(pid) if steering.open_listeners() > 0 => format!(
            "new connections to port {port} stay refused until its listener closes, at most --keep-refusing after the drain's timeout (held by process {pid}; `kill -KILL {pid}` ends it now)",
            port = steering.port()
        ),
        _ => "new connections are accepted again".to_string(),
    };
    format!("{closed} connection(s) were closed before; {refusal}")
}

/// The poll interval with ±20 % jitter, so drains started together (a fleet restarting)
/// do not close connections in lockstep.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_that_fails_is_tried_again_four_times_then_the_drain_gives_up() {
        let mut budget = ScanBudget::default();
        for attempt in 1..MAX_FAILED_SCANS {
            assert_eq!(budget.failed(true), Ok(attempt));
        }
        assert_eq!(budget.failed(true), Err(MAX_FAILED_SCANS));
    }

    #[test]
    fn a_scan_that_works_gives_the_budget_back() {
        let mut budget = ScanBudget::default();
        for _ in 1..MAX_FAILED_SCANS {
            budget.failed(true).unwrap();
        }
        budget.succeeded();
        assert_eq!(budget.failed(true), Ok(1));
    }

    #[test]
    fn a_scan_that_fails_after_the_deadline_ends_the_drain_at_once() {
        let mut budget = ScanBudget::default();
        assert_eq!(budget.failed(true), Ok(1));
        assert_eq!(budget.failed(false), Err(2));
    }
}

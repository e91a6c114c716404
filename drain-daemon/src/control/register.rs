//! The register of the drains a daemon runs ([`Drains`]): what its status line shows,
//! and what it waits for before it exits. Once stopping it takes no new drain, so the
//! wait has an end.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::drain::DrainPlan;

/// The drains a daemon runs: what its status line shows, and what it waits for before
/// it exits. Cloning shares the register.
#[derive(Clone, Debug)]
pub struct Drains(Arc<watch::Sender<Running>>);

/// A snapshot of the register.
#[derive(Clone, Debug, Default)]
pub struct Running {
    drains: BTreeMap<u64, RunningDrain>,
    next_id: u64,
    stopping: bool,
}

#[derive(Clone, Copy, Debug)]
struct RunningDrain {
    port: u16,
    /// When the drain ends at the latest: its accept grace, its timeout, and the close
    /// grace `--force` may add after the deadline.
    ends_by: Instant,
}

/// A drain's place in the register, given up when the drain ends (also by a panic).
#[derive(Debug)]
pub(super) struct DrainEntry {
    drains: Drains,
    id: u64,
}

impl Drop for DrainEntry {
    fn drop(&mut self) {
        self.drains.0.send_modify(|running| {
            running.drains.remove(&self.id);
        });
    }
}

impl Default for Drains {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Running::default())))
    }
}

impl Drains {
    /// Registers a drain; `None` once [`Drains::stop`] was called. Checked and
    /// registered under one lock, so no drain starts after the daemon began to wait.
    pub(super) fn begin(&self, plan: &DrainPlan) -> Option<DrainEntry> {
        let ends_by = Instant::now() + plan.accept_grace + plan.timeout + plan.close_grace + SLACK;
        let mut id = None;
        self.0.send_if_modified(|running| {
            if running.stopping {
                return false;
            }
            id = Some(running.next_id);
            running.next_id += 1;
            let drain = RunningDrain {
                port: plan.port,
                ends_by,
            };
            running.drains.insert(running.next_id - 1, drain);
            true
        });
        id.map(|id| DrainEntry {
            drains: self.clone(),
            id,
        })
    }

    /// From now on new drains are refused with [`super::ErrorKind::Stopping`].
    pub fn stop(&self) {
        self.0.send_modify(|running| running.stopping = true);
    }

    /// Changes of the register, for the daemon's status line.
    pub fn subscribe(&self) -> watch::Receiver<Running> {
        self.0.subscribe()
    }

    /// Resolves when no drain runs.
    pub async fn finished(&self) {
        let mut changes = self.0.subscribe();
        // Err only if the sender is gone, and `self` holds it.
        let _ = changes.wait_for(|running| running.drains.is_empty()).await;
    }
}

/// Polling and closing past the deadline take a little longer than the deadline itself.
const SLACK: Duration = Duration::from_secs(2);

impl Running {
    /// How many drains run.
    pub fn count(&self) -> usize {
        self.drains.len()
    }

    /// The ports being drained, in order, each once.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.drains.values().map(|drain| drain.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// How long until every running drain has ended at the latest.
    pub fn longest_remaining(&self) -> Duration {
        let now = Instant::now();
        self.drains
            .values()
            .map(|drain| drain.ends_by.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn plan(port: u16) -> DrainPlan {
        DrainPlan {
            port,
            ..crate::drain::tests::plan()
        }
    }

    #[tokio::test]
    async fn a_stopped_register_takes_no_drain_and_waits_for_the_running_ones() {
        let drains = Drains::default();
        let first = drains.begin(&plan(8080)).expect("taken before the stop");
        let second = drains.begin(&plan(9090)).expect("taken before the stop");
        let running = drains.subscribe().borrow().clone();
        assert_eq!((running.count(), running.ports()), (2, vec![8080, 9090]));
        // Accept grace + timeout + close grace, and the slack.
        assert!(running.longest_remaining() > Duration::from_secs(37));
        assert!(running.longest_remaining() <= Duration::from_secs(39));
        drains.stop();
        assert!(
            drains.begin(&plan(7070)).is_none(),
            "no drain after the stop"
        );
        let finished = tokio::spawn({
            let drains = drains.clone();
            async move { drains.finished().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!finished.is_finished(), "one drain still runs");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("finished once no drain runs")
            .unwrap();
    }
}

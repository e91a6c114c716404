//! What one pod may take of the daemon on the pod socket, so that no pod holds up
//! another's drain: a few requests at once per pod ([`Quota`]), and drains of a bounded
//! length ([`check_plan`]). A pod is known by its network namespace, which the kernel
//! gives for the peer's process (never what the pod says): every container of a pod
//! shares it, and a drain acts in it only. The socket's global cap
//! ([`super::MAX_CONNECTIONS`]) still bounds all pods together.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::drain::DrainPlan;

/// Requests one pod may have open at once on the pod socket (connections from accept to
/// their last reply, drains included). A pod drains a few ports when it stops; more is a
/// pod holding slots others need.
pub const MAX_REQUESTS_PER_POD: usize = 4;
/// The longest `--accept-grace` a pod may ask for.
pub const MAX_ACCEPT_GRACE: Duration = Duration::from_secs(60);
/// The longest `--timeout` a pod may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The longest `--close-grace` a pod may ask for (it adds to the drain after its
/// deadline).
pub const MAX_CLOSE_GRACE: Duration = Duration::from_secs(60);
/// The longest `--keep-refusing` a pod may ask for, as long as its `--timeout`: a pod's
/// containers are killed at the end of its grace period (30 s by default).
pub const MAX_KEEP_REFUSING: Duration = Duration::from_secs(10 * 60);

/// A pod's plan within the pod socket's bounds, or the message that refuses it.
pub fn check_plan(plan: &DrainPlan) -> Result<(), String> {
    for (option, asked, most) in [
        ("--accept-grace", plan.accept_grace, MAX_ACCEPT_GRACE),
        ("--timeout", plan.timeout, MAX_TIMEOUT),
        ("--close-grace", plan.close_grace, MAX_CLOSE_GRACE),
        ("--keep-refusing", plan.keep_refusing, MAX_KEEP_REFUSING),
    ] {
        if asked > most {
            return Err(format!(
                "{option} {asked:?} is longer than the pod socket allows ({most:?}): ask for less, \
                 or drain through the node's root socket"
            ));
        }
    }
    Ok(())
}

/// The requests each pod has open. Cloning shares the counts.
#[derive(Clone, Debug, Default)]
pub struct Quota(Arc<Mutex<HashMap<u64, usize>>>);

/// One request's place in its pod's quota, given back when dropped (also by a panic).
#[derive(Debug)]
pub struct Held {
    quota: Quota,
    pod: u64,
}

impl Quota {
    /// Takes a place for a request of the pod whose network namespace is `pod`; `None`
    /// when it has [`MAX_REQUESTS_PER_POD`] open already.
    pub fn take(&self, pod: u64) -> Option<Held> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(pod).or_default();
        if *count >= MAX_REQUESTS_PER_POD {
            return None;
        }
        *count += 1;
        Some(Held {
            quota: self.clone(),
            pod,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self
            .quota
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.pod) {
            *count -= 1;
            // A pod that has left takes no room in the map.
            if *count == 0 {
                open.remove(&self.pod);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_its_quota_and_no_more_and_others_are_not_counted_against_it() {
        let quota = Quota::default();
        let held: Vec<Held> = (0..MAX_REQUESTS_PER_POD)
            .map(|_| quota.take(1).expect("within the quota"))
            .collect();
        assert!(quota.take(1).is_none());
        assert!(quota.take(2).is_some(), "another pod is not held up");
        drop(held);
        assert!(quota.take(1).is_some());
        assert!(quota.0.lock().unwrap().get(&2).is_none(), "pod 2 has left");
    }

    #[test]
    fn plans_longer_than_the_pod_socket_allows_are_refused() {
        let mut plan = DrainPlan {
            port: 8080,
            timeout: MAX_TIMEOUT,
            poll_interval: Duration::from_millis(100),
            quiet_period: Duration::from_secs(1),
            close_grace: MAX_CLOSE_GRACE,
            pace: crate::drain::Pace::Spread(Duration::ZERO),
            force: false,
            accept_grace: MAX_ACCEPT_GRACE,
            pid: None,
            successor_port: None,
            no_connection_close: false,
            websocket_close: false,
            keep_refusing: crate::drain::DEFAULT_KEEP_REFUSING,
        };
        assert!(check_plan(&plan).is_ok());
        plan.accept_grace = Duration::from_secs(24 * 3600);
        let why = check_plan(&plan).unwrap_err();
        assert!(
            why.starts_with("--accept-grace 86400s is longer than"),
            "{why}"
        );
        plan.accept_grace = MAX_ACCEPT_GRACE;
        plan.keep_refusing = MAX_KEEP_REFUSING + Duration::from_secs(1);
        let why = check_plan(&plan).unwrap_err();
        assert!(why.starts_with("--keep-refusing 601s is longer"), "{why}");
    }
}

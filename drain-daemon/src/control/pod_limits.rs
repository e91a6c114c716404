//! What one pod may take of the daemon on the pod socket, so that no pod holds up
//! another's drain and none fills the node with what drains leave: a few requests at
//! once, records in a few network namespaces ([`super::pod_quota`]), and drains of a
//! bounded length ([`check_plan`]). The socket's global cap ([`super::MAX_CONNECTIONS`])
//! still bounds all pods together.
//!
//! A pod is known by what the kernel says of the peer's process, never by what it says:
//! its network namespace, and its [`PodKey`], the PID namespace one level below the
//! daemon's that the peer's descends from. A pod that may create user namespaces makes
//! network namespaces at will, so the caps per network namespace are backed by caps per
//! key, which it cannot multiply. A pod's containers share its network namespace and,
//! unless `shareProcessNamespace`, each has a PID namespace, so a key of its own: an
//! ordinary pod (a few containers draining a few ports in the one network namespace)
//! meets the namespace's cap of [`MAX_REQUESTS_PER_NETNS`] first, as it always did, and
//! has records in one namespace; the caps per key bind only a container that makes
//! network namespaces. It gets twice a namespace's requests, and records in
//! [`MAX_NAMESPACES_PER_POD`] of them, however many it makes; a pod of n containers n
//! times that, n being fixed by its spec.
//!
//! [`PodKey`]: crate::pod::key::PodKey

use std::time::Duration;

use crate::drain::DrainPlan;

/// Requests one network namespace may have open at once on the pod socket (connections
/// from accept to their last reply, drains included). A pod drains a few ports when it
/// stops; more is a pod holding slots others need.
pub const MAX_REQUESTS_PER_NETNS: usize = 4;
/// Requests one pod ([`PodKey`](crate::pod::key::PodKey)) may have open at once, in all
/// its network namespaces together.
pub const MAX_REQUESTS_PER_POD: usize = 2 * MAX_REQUESTS_PER_NETNS;
/// Network namespaces one pod may have drain records in (those of a namespace that is
/// gone are swept: they do not count).
pub const MAX_NAMESPACES_PER_POD: usize = 16;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_longer_than_the_pod_socket_allows_are_refused() {
        let mut plan = DrainPlan {
            timeout: MAX_TIMEOUT,
            close_grace: MAX_CLOSE_GRACE,
            accept_grace: MAX_ACCEPT_GRACE,
            keep_refusing: MAX_KEEP_REFUSING,
            ..crate::drain::tests::plan()
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

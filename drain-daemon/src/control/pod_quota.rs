//! What each pod holds of the pod socket now, against the caps of [`super::pod_limits`]:
//! requests open per network namespace and per pod, and the network namespaces a pod
//! has drain records in.
//!
//! A drain's record outlives its request: it stays under /run while its namespace or its
//! listeners live, and the sweep removes it after ([`crate::daemon::sweep`]). So a pod's
//! namespaces are those it has requests open in and those it drained in that still have
//! a record directory ([`announce::namespaces_with_records`], listed at each pod request,
//! which is cheap: one directory the caps keep small). A namespace whose last request
//! ended after the listing began is kept until the next one: its record may have come
//! after the listing.
//!
//! Counted in memory, from zero when the daemon starts: a record does not say which pod
//! asked for it, and a namespace's processes that wrote none cannot say either. A
//! restart thus lets a pod have records in the caps' worth of namespaces again while the
//! earlier ones live; only the node's root restarts the daemon.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use tracing::warn;

use super::pod_limits::{MAX_NAMESPACES_PER_POD, MAX_REQUESTS_PER_NETNS, MAX_REQUESTS_PER_POD};
use crate::{announce, daemon::sweep, pod::key::PodKey};

/// What each pod holds. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct Quota(Arc<Mutex<Holdings>>);

#[derive(Debug, Default)]
struct Holdings {
    /// Requests open per network namespace (inode).
    netns: HashMap<u64, usize>,
    pods: HashMap<PodKey, Pod>,
}

#[derive(Debug, Default)]
struct Pod {
    /// Requests open, in all its namespaces.
    open: usize,
    /// The network namespaces (inodes) it has requests open in or drained in.
    namespaces: HashMap<u64, Namespace>,
}

#[derive(Debug)]
struct Namespace {
    open: usize,
    /// When its last request ended.
    released: Instant,
}

/// The network namespaces with drain records, as listed from `at` on.
#[derive(Debug)]
pub struct Recorded {
    at: Instant,
    /// Their inodes; `None` when the tree could not be read, and nothing is forgotten.
    namespaces: Option<HashSet<u64>>,
}

impl Recorded {
    /// Lists the record tree now (it blocks: not on an async worker).
    pub fn now() -> Recorded {
        let at = Instant::now();
        let namespaces = announce::namespaces_with_records()
            .map_err(|err| warn!("counting the pods' drain records as they were: {err}"))
            .ok();
        Recorded { at, namespaces }
    }
}

/// Which cap a request is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this pod's network namespace has {MAX_REQUESTS_PER_NETNS} requests open on the pod socket already, the most one may have: wait for one to end")]
    NetnsRequests,
    #[error("this pod (its container's PID namespace) has {MAX_REQUESTS_PER_POD} requests open on the pod socket already, in all its network namespaces, the most one pod may have: wait for one to end")]
    PodRequests,
    #[error("this pod (its container's PID namespace) has drain records in {MAX_NAMESPACES_PER_POD} network namespaces already, the most one pod may have: drain in one of those, or close the listeners of those it no longer drains in and leave them (their records are swept within {}s)", sweep::PERIOD.as_secs())]
    Namespaces,
}

/// One request's place in its pod's quota, given back when dropped (also by a panic).
#[derive(Debug)]
pub struct Held {
    quota: Quota,
    pod: PodKey,
    netns: u64,
}

impl Quota {
    /// Takes a place for a request of `pod` from the network namespace `netns`, or says
    /// which cap it is over. Reads the record tree: not on an async worker.
    pub fn take(&self, pod: PodKey, netns: u64) -> Result<Held, Refusal> {
        self.take_listed(pod, netns, &Recorded::now())
    }

    fn take_listed(&self, pod: PodKey, netns: u64, recorded: &Recorded) -> Result<Held, Refusal> {
        let mut holdings = self.lock();
        holdings.forget_unrecorded(recorded);
        if holdings.netns.get(&netns).copied().unwrap_or_default() >= MAX_REQUESTS_PER_NETNS {
            return Err(Refusal::NetnsRequests);
        }
        if let Some(held) = holdings.pods.get(&pod) {
            if held.open >= MAX_REQUESTS_PER_POD {
                return Err(Refusal::PodRequests);
            }
            if !held.namespaces.contains_key(&netns)
                && held.namespaces.len() >= MAX_NAMESPACES_PER_POD
            {
                return Err(Refusal::Namespaces);
            }
        }
        *holdings.netns.entry(netns).or_default() += 1;
        let held = holdings.pods.entry(pod).or_default();
        held.open += 1;
        held.namespaces
            .entry(netns)
            .or_insert(Namespace {
                open: 0,
                released: Instant::now(),
            })
            .open += 1;
        Ok(Held {
            quota: self.clone(),
            pod,
            netns,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Holdings> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Holdings {
    /// Forgets the namespaces no request holds and no record stands for any more, and the
    /// pods left with nothing.
    fn forget_unrecorded(&mut self, recorded: &Recorded) {
        let Some(listed) = &recorded.namespaces else {
            return;
        };
        for pod in self.pods.values_mut() {
            pod.namespaces.retain(|inode, namespace| {
                namespace.open > 0 || namespace.released >= recorded.at || listed.contains(inode)
            });
        }
        self.pods
            .retain(|_, pod| pod.open > 0 || !pod.namespaces.is_empty());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut holdings = self.quota.lock();
        if let Some(open) = holdings.netns.get_mut(&self.netns) {
            *open -= 1;
            // A namespace with no request takes no room in the map.
            if *open == 0 {
                holdings.netns.remove(&self.netns);
            }
        }
        if let Some(pod) = holdings.pods.get_mut(&self.pod) {
            pod.open -= 1;
            if let Some(namespace) = pod.namespaces.get_mut(&self.netns) {
                namespace.open -= 1;
                namespace.released = Instant::now();
            }
        }
    }
}

#[cfg(test)]
#[path = "pod_quota_tests.rs"]
mod tests;

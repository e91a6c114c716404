//! PID namespaces: which processes a pod's drain may act on, and what its `--pid` means.
//!
//! A peer on the pod socket ([`crate::pod`]) may drain only what its own processes
//! hold, and names processes by the pids it sees. The daemon sees every process (it
//! runs with the host's PID namespace) and tells a pod's processes from the others by
//! the namespace each is in (`/proc/<pid>/ns/pid`, an nsfs inode unique among live
//! namespaces). Only the peer's own namespace counts, not namespaces nested in it: the
//! kernel does not say through procfs whether one PID namespace descends from another,
//! and a pod's containers share one namespace or have one each, none nested.
//! A pid the peer gives is the last entry of `NSpid:` in `/proc/<pid>/status` (the
//! process's pid as its own namespace numbers it), looked up among that namespace's
//! members only.
#![forbid(unsafe_code)]

use std::{collections::HashSet, os::unix::fs::MetadataExt as _};

use procfs::process::Process;

use crate::inventory::owners;

/// A PID namespace, by the inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNamespace(u64);

impl PidNamespace {
    pub fn from_inode(inode: u64) -> Self {
        PidNamespace(inode)
    }

    /// The namespace process `pid` (as the daemon numbers it) is in; `None` when it is
    /// gone or its entry cannot be read.
    pub fn of_process(pid: i32) -> Option<Self> {
        std::fs::metadata(format!("/proc/{pid}/ns/pid"))
            .ok()
            .map(|meta| PidNamespace(meta.ino()))
    }

    /// The daemon's own.
    pub fn own() -> Option<Self> {
        std::fs::metadata("/proc/self/ns/pid")
            .ok()
            .map(|meta| PidNamespace(meta.ino()))
    }

    /// Whether process `pid` (the daemon's number) is in this namespace.
    pub fn contains(self, pid: i32) -> bool {
        Self::of_process(pid) == Some(self)
    }

    /// The processes in this namespace now, by the daemon's numbers.
    pub fn members(self) -> HashSet<i32> {
        owners::all_pids()
            .into_iter()
            .filter(|&pid| self.contains(pid))
            .collect()
    }

    /// The daemon's number of the process this namespace numbers `inner_pid`; `None`
    /// when no process of the namespace has that number.
    pub fn translate(self, inner_pid: i32) -> Option<i32> {
        owners::all_pids().into_iter().find(|&pid| {
            self.contains(pid)
                && innermost_pid(pid) == Some(inner_pid)
                // Checked again after reading the status: the pid may have been reused.
                && self.contains(pid)
        })
    }

    /// How this namespace numbers process `pid` (the daemon's number): what a reply to a
    /// pod may call it. `None` when the process is not a member (a pod is told nothing of
    /// processes it cannot see) or is gone.
    pub fn number_of(self, pid: i32) -> Option<i32> {
        let number = innermost_pid(pid).filter(|_| self.contains(pid))?;
        // Checked again after reading the status: the pid may have been reused.
        self.contains(pid).then_some(number)
    }
}

/// The last pid of `NSpid:` in `/proc/<pid>/status` (the procfs crate): the number
/// process `pid` has in its own PID namespace; `None` when it cannot be read.
fn innermost_pid(pid: i32) -> Option<i32> {
    Process::new(pid)
        .ok()?
        .status()
        .ok()?
        .nspid?
        .last()
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_a_member_of_its_namespace_under_its_own_number() {
        let own = PidNamespace::own().unwrap();
        let pid = std::process::id() as i32;
        // Its own namespace numbers it as it numbers itself.
        assert_eq!(innermost_pid(pid), Some(pid));
        assert!(own.contains(pid));
        assert!(own.members().contains(&pid));
        assert_eq!(own.translate(pid), Some(pid));
        assert_eq!(own.number_of(pid), Some(pid));
        assert_eq!(PidNamespace::from_inode(1).number_of(pid), None);
        assert!(!PidNamespace::from_inode(1).contains(pid));
        assert_eq!(PidNamespace::from_inode(1).translate(pid), None);
    }
}

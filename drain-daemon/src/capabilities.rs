//! The capabilities a drain needs, read from `/proc/<pid>/status`.
//!
//! A drain loads and attaches a BPF program and destroys sockets (`CAP_BPF`,
//! `CAP_NET_ADMIN`) and borrows another process's sockets (`CAP_SYS_PTRACE`, for
//! `pidfd_getfd`). Being uid 0 is neither needed (a service can be given just these)
//! nor enough (a container's root may have none of them): the effective set decides,
//! for drainctl itself and for the peers the daemon serves.
#![forbid(unsafe_code)]

/// The capabilities a drain needs, by bit number and name.
pub const NEEDED: [(u32, &str); 3] = [
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (39, "CAP_BPF"),
];

/// The effective capabilities (`CapEff`) of process `pid` (`"self"` for this one);
/// `None` when its status cannot be read.
pub fn effective(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_effective(&status)
}

/// The names of the [`NEEDED`] capabilities missing from `effective`.
pub fn missing(effective: u64) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// `CapEff` of a `/proc/<pid>/status`.
fn parse_effective(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_are_read_from_proc_status() {
        let status = "Name:\tdrainctl\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_effective(status), Some(0x1ff_ffff_ffff));
        assert!(missing(0x1ff_ffff_ffff).is_empty());
        assert_eq!(missing(0), ["CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"]);
        assert_eq!(missing(1 << 12), ["CAP_SYS_PTRACE", "CAP_BPF"]);
        assert_eq!(parse_effective("Name:\tx\n"), None);
    }
}

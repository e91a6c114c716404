//! When a drain's steering ends at the latest ([`drain_common::EXPIRY_MAP`]).
//!
//! The refusal outlives the process that set it up (pinned in bpffs, or kept by a
//! [`super::holder`]) so that the server's stop after a drain finds it in place; it ends
//! when the draining listeners close. A server that keeps running would be refused for
//! good if that were all, after a drain whose `drainctl` was killed, or one run without
//! stopping the server. So the program itself stops steering at an instant written into
//! its map, which needs no process to be alive: the drain's deadline plus
//! `--keep-refusing` when it starts, then `--keep-refusing` from its end.
//!
//! The instant is `CLOCK_BOOTTIME`, what `bpf_ktime_get_boot_ns` reads: it runs on
//! through a suspend, as a deadline in wall time would. A process in a time namespace
//! reads its clock shifted by that namespace's offset, which the kernel program does
//! not see; the offset is taken off.

use std::{
    borrow::{Borrow, BorrowMut},
    fs,
    sync::OnceLock,
    time::Duration,
};

use aya::maps::{Array, MapData, MapError};

/// An instant of the kernel's `CLOCK_BOOTTIME`, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry(u64);

impl Expiry {
    /// Now, on the kernel's clock.
    pub fn now() -> Expiry {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let nanos = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
        Expiry(clamp(nanos - boottime_offset()))
    }

    /// `after` from now.
    pub fn after(after: Duration) -> Expiry {
        Expiry(Self::now().0.saturating_add(nanos(after)))
    }

    /// Whether this instant has come.
    pub fn passed(self) -> bool {
        self <= Self::now()
    }

    /// The program's end as written in its map; `None` when unreadable or unset.
    pub fn read<T: Borrow<MapData>>(map: &Array<T, u64>) -> Option<Expiry> {
        map.get(&0, 0).ok().filter(|&at| at != 0).map(Expiry)
    }

    /// Writes this instant into the program's map: it steers nothing from then on.
    pub fn write<T: BorrowMut<MapData>>(self, map: &mut Array<T, u64>) -> Result<(), MapError> {
        // 0 means "no end" to the program; the earliest real instant is 1.
        map.set(0, self.0.max(1), 0)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn clamp(nanos: i128) -> u64 {
    u64::try_from(nanos.max(0)).unwrap_or(u64::MAX)
}

/// This process's time namespace's offset of `CLOCK_BOOTTIME`, in nanoseconds (0 outside
/// one, and on kernels without time namespaces). Read once: this process never changes its
/// time namespace, and the kernel refuses to change a namespace's offsets once a process
/// is in it.
fn boottime_offset() -> i128 {
    static OFFSET: OnceLock<i128> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        fs::read_to_string("/proc/self/timens_offsets")
            .ok()
            .and_then(|offsets| parse_boottime_offset(&offsets))
            .unwrap_or(0)
    })
}

/// The `boottime <seconds> <nanoseconds>` line of `/proc/PID/timens_offsets`.
fn parse_boottime_offset(offsets: &str) -> Option<i128> {
    offsets.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != "boottime" {
            return None;
        }
        let seconds: i64 = fields.next()?.parse().ok()?;
        let nanos: i64 = fields.next()?.parse().ok()?;
        Some(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_namespace_offset_is_read_from_its_line() {
        let offsets = "monotonic           0         0\nboottime        -3600       500\n";
        assert_eq!(
            parse_boottime_offset(offsets),
            Some(-3600 * 1_000_000_000 + 500)
        );
        assert_eq!(parse_boottime_offset("monotonic 5 0\n"), None);
        assert_eq!(parse_boottime_offset("boottime x 0\n"), None);
        assert_eq!(parse_boottime_offset(""), None);
    }

    #[test]
    fn an_instant_after_a_while_has_not_passed_and_now_has() {
        assert!(!Expiry::after(Duration::from_secs(60)).passed());
        assert!(Expiry::now().passed());
        assert!(Expiry::after(Duration::MAX) > Expiry::after(Duration::from_secs(1)));
        assert_eq!(clamp(-5), 0);
    }
}

//! A drain's blocking system calls, kept off the async runtime's workers.
//!
//! A scan is a netlink dump and `/proc` reads: hundreds of milliseconds on a port with
//! 100k sockets, and unbounded when a `/proc` read waits on a stuck process; a close is
//! a netlink re-read, `pidfd_getfd` and `shutdown`; setting up the steering loads and
//! attaches an eBPF program. In the daemon, many drains and the control socket share a
//! few workers: one drain blocking a worker would stall the others' passes and
//! deadlines and leave clients unanswered. So [`run`] moves a blocking call off its
//! worker (the worker's other tasks go on elsewhere), and a pass's scan runs on a
//! blocking thread of its own ([`scan_by`]), raced against the drain's deadline: a scan
//! stuck past the deadline is left to finish on its own, and the drain reports on time.

use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

use super::ownership::{Ownership, Scan};
use crate::inventory::{Inventory, InventoryError};

/// Runs `work`, which blocks, without holding up the other tasks of a multi-threaded
/// runtime (`block_in_place`); elsewhere (a current-thread runtime, no runtime) it just
/// runs.
pub(crate) fn run<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// What a drain scans its port with, and what it owns there: moved to the blocking
/// thread for each scan.
pub(super) struct Scanner {
    pub(super) inventory: Inventory,
    pub(super) ownership: Ownership,
}

/// How long past the deadline a scan may still finish. A pass often starts just before
/// the deadline, and a scan of 100k sockets takes about 300 ms; one still running a
/// second after the deadline is stuck.
const SCAN_GRACE: Duration = Duration::from_secs(1);

/// Scans the port on a blocking thread: the scanner back with the scan's result and
/// the instant the scan started, or `None` when the scan is still running
/// [`SCAN_GRACE`] after `deadline` (or when `scanner` was already gone). The scanner
/// then stays with the scan still running, and `scanner` is left empty.
///
/// The instant is taken on the blocking thread, right before the dump: the kernel
/// reads TCP_INFO's "ms ago" stamps then, and a busy host can take tens of milliseconds
/// to start a blocking thread, which would shift every arrival time computed from them.
pub(super) async fn scan_by(
    scanner: &mut Option<Box<Scanner>>,
    deadline: Instant,
) -> Option<(&mut Scanner, Instant, Result<Scan, InventoryError>)> {
    let mut taken = scanner.take()?;
    let scanning = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result = taken.ownership.scan(&mut taken.inventory);
        (taken, started, result)
    });
    let (back, started, result) = tokio::select! {
        joined = scanning => match joined {
            Ok(done) => done,
            // A panic in the scan is the drain's, as when it ran inline.
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // The runtime is shutting down.
            Err(_) => return None,
        },
        () = tokio::time::sleep_until((deadline + SCAN_GRACE).into()) => return None,
    };
    Some((scanner.insert(back), started, result))
}

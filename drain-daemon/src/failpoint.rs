//! Faults injected on purpose, so the tests can show what a drain does when the kernel
//! misbehaves: a sock_diag dump failing with ENOBUFS, timing out, or answering a
//! malformed message, and a system call that stalls for seconds (a /proc read of a stuck
//! process, a slow attach), `pidfd_getfd` denied for a connection's server (an LSM
//! policy for one process, not the host's ptrace rules), a kernel without
//! `SO_PEERPIDFD` (before Linux 6.5) under the pod socket. Such faults cannot be caused
//! from outside on demand.
//!
//! Debug builds only: in a release build (the package, `cargo xtask bench`) [`hit`] is a
//! constant `None` and the environment is never read, so nobody can switch a fault on in
//! a deployed daemon. In a debug build, `DRAIN_FAILPOINTS` is read once, at the first
//! [`hit`]: `;`-separated entries `POINT:PORT=FAULT [from=N] [times=M]`, where `POINT` is
//! `scan` (a sock_diag dump of the port), `attach` (setting up the port's steering;
//! stalls only), `borrow` (`pidfd_getfd` of one of the port's connections, to close
//! it) or `peerpidfd` (`SO_PEERPIDFD` of a pod socket peer; `PORT` is 0, `enoprotoopt`
//! only), `FAULT` is `enobufs`, `timeout`, `malformed`, `eperm`, `enoprotoopt` or
//! `stall-MS` (sleep MS milliseconds, then go on), `from=N` starts at the Nth time the
//! point is reached for that port (1-based, default 1) and `times=M` stops after M
//! faults (default: never). For example `scan:8080=enobufs from=2 times=1` fails the
//! first scan of a drain's passes once (its setup scans the port once before them).
#![forbid(unsafe_code)]

/// A failure to inject in place of the real call's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The receive fails with `ENOBUFS` (the socket's buffer overran).
    Enobufs,
    /// The receive fails with `EAGAIN`, as after the socket's receive timeout.
    Timeout,
    /// The answer arrives, but malformed.
    Malformed,
    /// The call fails with `EPERM`, as `pidfd_getfd` does where ptrace is denied.
    PermissionDenied,
    /// The call fails with `ENOPROTOOPT`, as `getsockopt(SO_PEERPIDFD)` does before
    /// Linux 6.5.
    NoProtocolOption,
}

/// Where a fault can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A sock_diag dump of a port's sockets.
    Scan,
    /// Loading and attaching the port's steering.
    Attach,
    /// Borrowing a connection's socket from its server (`pidfd_getfd`), to close it.
    Borrow,
    /// Naming a pod socket peer by a pidfd (`SO_PEERPIDFD`); its port is 0.
    PeerPidfd,
}

/// Called where a fault can be injected: the fault to inject this time, if any. A stall
/// sleeps here (the calling thread is blocked, as by a slow system call) and returns
/// `None`. Always `None` in a release build.
#[cfg(not(debug_assertions))]
pub fn hit(_point: Point, _port: u16) -> Option<Fault> {
    None
}

#[cfg(debug_assertions)]
pub use armed::hit;

#[cfg(debug_assertions)]
mod armed {
    use std::{
        sync::{Mutex, OnceLock},
        time::Duration,
    };

    use super::{Fault, Point};

    /// What an entry does when it fires.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Action {
        Fail(Fault),
        Stall(Duration),
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        point: Point,
        port: u16,
        action: Action,
        from: u64,
        times: Option<u64>,
        /// How often the point was reached for the port so far.
        reached: u64,
        fired: u64,
    }

    pub fn hit(point: Point, port: u16) -> Option<Fault> {
        static ENTRIES: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
        let entries = ENTRIES.get_or_init(|| {
            let spec = std::env::var("DRAIN_FAILPOINTS").unwrap_or_default();
            Mutex::new(parse(&spec).unwrap_or_else(|err| {
                tracing::error!("DRAIN_FAILPOINTS ignored: {err}");
                Vec::new()
            }))
        });
        let action = {
            let mut entries = entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = entries
                .iter_mut()
                .find(|e| e.point == point && e.port == port)?;
            entry.reached += 1;
            let due = entry.reached >= entry.from && entry.times.is_none_or(|t| entry.fired < t);
            if !due {
                return None;
            }
            entry.fired += 1;
            entry.action
        };
        tracing::warn!(?point, port, ?action, "failpoint fired");
        match action {
            Action::Fail(fault) => Some(fault),
            Action::Stall(duration) => {
                std::thread::sleep(duration);
                None
            }
        }
    }

    fn parse(spec: &str) -> Result<Vec<Entry>, String> {
        spec.split(';')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|text| {
                let bad = |why: &str| format!("{text:?}: {why}");
                let (target, rest) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
                let (point, port) = target.split_once(':').ok_or_else(|| bad("no ':PORT'"))?;
                let point = match point {
                    "scan" => Point::Scan,
                    "attach" => Point::Attach,
                    "borrow" => Point::Borrow,
                    "peerpidfd" => Point::PeerPidfd,
                    _ => return Err(bad("the point is scan, attach, borrow or peerpidfd")),
                };
                let port = port.parse().map_err(|_| bad("bad port"))?;
                let mut words = rest.split_whitespace();
                let action = match words.next().ok_or_else(|| bad("no fault"))? {
                    "enobufs" => Action::Fail(Fault::Enobufs),
                    "timeout" => Action::Fail(Fault::Timeout),
                    "malformed" => Action::Fail(Fault::Malformed),
                    "eperm" => Action::Fail(Fault::PermissionDenied),
                    "enoprotoopt" => Action::Fail(Fault::NoProtocolOption),
                    other => match other.strip_prefix("stall-").map(str::parse) {
                        Some(Ok(ms)) => Action::Stall(Duration::from_millis(ms)),
                        _ => return Err(bad("unknown fault")),
                    },
                };
                match (point, action) {
                    (Point::Attach, Action::Fail(_)) => {
                        return Err(bad("attach takes stall-MS only"))
                    }
                    (
                        Point::Scan,
                        Action::Fail(Fault::PermissionDenied | Fault::NoProtocolOption),
                    ) => return Err(bad("scan takes enobufs, timeout, malformed or stall-MS")),
                    (Point::Borrow, Action::Fail(fault)) if fault != Fault::PermissionDenied => {
                        return Err(bad("borrow takes eperm or stall-MS"))
                    }
                    (Point::PeerPidfd, action)
                        if action != Action::Fail(Fault::NoProtocolOption) =>
                    {
                        return Err(bad("peerpidfd takes enoprotoopt only"))
                    }
                    _ => {}
                }
                let mut entry = Entry {
                    point,
                    port,
                    action,
                    from: 1,
                    times: None,
                    reached: 0,
                    fired: 0,
                };
                for word in words {
                    match word.split_once('=') {
                        Some(("from", n)) => entry.from = n.parse().map_err(|_| bad("bad from"))?,
                        Some(("times", n)) => {
                            entry.times = Some(n.parse().map_err(|_| bad("bad times"))?)
                        }
                        _ => return Err(bad("expected from=N or times=M")),
                    }
                }
                Ok(entry)
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn entries_name_a_point_a_port_a_fault_and_when() {
            let entries =
                parse("scan:8080=enobufs from=2 times=1; attach:9090=stall-3000").unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(
                (entries[0].point, entries[0].port, entries[0].action),
                (Point::Scan, 8080, Action::Fail(Fault::Enobufs))
            );
            assert_eq!((entries[0].from, entries[0].times), (2, Some(1)));
            assert_eq!(
                entries[1].action,
                Action::Stall(Duration::from_millis(3000))
            );
            assert_eq!(
                parse("borrow:8080=eperm").unwrap()[0].action,
                Action::Fail(Fault::PermissionDenied)
            );
            assert_eq!(
                parse("peerpidfd:0=enoprotoopt").unwrap()[0].action,
                Action::Fail(Fault::NoProtocolOption)
            );
            assert!(parse("").unwrap().is_empty());
            for bad in [
                "scan=enobufs",
                "scan:x=enobufs",
                "read:1=enobufs",
                "scan:1=slow",
                "scan:1=timeout when=2",
                "attach:1=enobufs",
                "scan:1=eperm",
                "borrow:1=enobufs",
                "scan:1=enoprotoopt",
                "peerpidfd:0=eperm",
                "peerpidfd:0=stall-10",
            ] {
                assert!(parse(bad).is_err(), "{bad}");
            }
        }
    }
}

//! The network namespace a drain works in.
//!
//! Everything a drain does is scoped by a network namespace: the sock_diag socket that
//! lists and destroys connections answers for the namespace it was created in, the
//! sk_lookup program is attached to one, and pins and drain records are filed under it.
//! A namespace is a property of a *thread*, so the drain engine works in its calling
//! thread's namespace ([`Netns::current`], read from `/proc/thread-self`, never
//! `/proc/self`, which is the main thread's). To drain in another namespace, the daemon
//! runs the drain on a thread of its own that first enters it ([`run_in`]): the
//! namespace is then that thread's for the whole drain, for every socket it creates.
//!
//! The daemon's client check names the namespace by the inode of its nsfs file: unique
//! among live namespaces, and what `ip netns` and `lsns` show. Files that outlive the
//! namespace (the pin tree in bpffs, the drain records in /run) need more: the kernel
//! reuses a deleted namespace's inode for the next namespace it makes, which would then
//! find, and take for its own, what was left of the deleted one. So they are named by
//! [`Identity`]: the inode and the namespace's cookie (`SO_NETNS_COOKIE`, Linux 5.14+),
//! a number the kernel gives each namespace once per boot and never reuses.

use std::{
    collections::HashMap,
    fs::File,
    future::Future,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    getsockopt_impl,
    sched::{setns, CloneFlags},
    sockopt_impl,
    sys::socket::{self, AddressFamily, GetSockOpt as _, SockFlag, SockType},
};

/// The calling thread's network namespace in procfs.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// `SO_NETNS_COOKIE` (asm-generic/socket.h; the libc crate does not have it yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

sockopt_impl!(
    /// The cookie of the network namespace a socket belongs to.
    NetnsCookie,
    GetOnly,
    libc::SOL_SOCKET,
    SO_NETNS_COOKIE,
    u64
);

/// A network namespace: an open handle (which keeps it alive and is what programs are
/// attached to) and its identity.
#[derive(Debug)]
pub struct Netns {
    file: File,
    identity: Identity,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        let file = File::open(THREAD_NETNS)?;
        let identity = Identity {
            inode: file.metadata()?.ino(),
            cookie: current_cookie()?,
        };
        Ok(Netns { file, identity })
    }

    /// What tells it from every other namespace since boot, for files that outlive it.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The handle, for attaching a program to the namespace.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What tells one network namespace from every other one since boot, dead ones included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The inode of its `ns/net` file (reused after the namespace is gone).
    pub inode: u64,
    /// Its cookie (never reused); `None` on kernels before 5.14, which have none.
    pub cookie: Option<u64>,
}

impl Identity {
    /// The identity of the calling thread's network namespace.
    pub fn current() -> io::Result<Identity> {
        Ok(Netns::current()?.identity())
    }

    /// The name of the namespace's directory in the pin and record trees:
    /// `netns-<inode>-<cookie>`, or `netns-<inode>` on a kernel without cookies.
    pub fn dir_name(&self) -> String {
        match self.cookie {
            Some(cookie) => format!("netns-{}-{cookie}", self.inode),
            None => format!("netns-{}", self.inode),
        }
    }

    /// The identity a directory name made by [`Identity::dir_name`] stands for, in the
    /// canonical spelling only (no sign, no leading zero): anything else was not made by
    /// this program.
    pub fn from_dir_name(name: &str) -> Option<Identity> {
        let rest = name.strip_prefix("netns-")?;
        let (inode, cookie) = match rest.split_once('-') {
            Some((inode, cookie)) => (inode, Some(parse_canonical(cookie)?)),
            None => (rest, None),
        };
        Some(Identity {
            inode: parse_canonical(inode)?,
            cookie,
        })
    }
}

/// A decimal number as this program writes it: digits only, no leading zero.
pub fn parse_canonical(digits: &str) -> Option<u64> {
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Why a drain could not be moved into a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("setns(CLONE_NEWNET) into the peer's network namespace: {0}")]
    Setns(#[source] nix::Error),
    #[error("opening {THREAD_NETNS} after setns: {0}")]
    Open(#[source] io::Error),
    #[error("spawning the thread that drains in another network namespace: {0}")]
    Spawn(#[source] io::Error),
    #[error("building the runtime of the thread that drains in another network namespace: {0}")]
    Runtime(#[source] io::Error),
    #[error("the thread that drains in another network namespace ended without a result")]
    Lost,
    #[error("the peer moved from network namespace {expected} to {entered} while drain-daemon looked at it")]
    Moved { expected: u64, entered: u64 },
}

/// Runs `work` to its end on a new thread that has entered the network namespace of
/// `target` (a namespace file or a pidfd: `setns` takes both, and a pidfd names a
/// process exactly, where a `/proc/<pid>` path could name a reused pid), if that is the
/// namespace `expected` (an inode checked before: a process may have moved since). The
/// thread has a runtime of its own: every socket `work` creates and every timer it sets
/// lives there, in that namespace, and the caller's threads never change namespace.
pub async fn run_in<T, F, Fut>(
    target: impl AsFd + Send + 'static,
    expected: u64,
    work: F,
) -> Result<T, EnterError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("drain-in-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(EnterError::Setns)?;
                let entered = current_inode().map_err(EnterError::Open)?;
                if entered != expected {
                    return Err(EnterError::Moved { expected, entered });
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(EnterError::Runtime)?;
                Ok(runtime.block_on(work()))
            })();
            let _ = result_tx.send(result);
        })
        .map_err(EnterError::Spawn)?;
    result_rx.await.unwrap_or(Err(EnterError::Lost))
}

/// The inode of the calling thread's network namespace.
pub fn current_inode() -> io::Result<u64> {
    Ok(std::fs::metadata(THREAD_NETNS)?.ino())
}

/// The network namespaces some thread is in: each one's inode, and a thread's `ns/net`
/// file to reach it by. Threads, not processes: the daemon drains a pod's namespace on
/// a thread of its own, its other threads elsewhere. Threads that end or cannot be read
/// meanwhile are left out.
pub fn namespaces_of_threads() -> HashMap<u64, PathBuf> {
    let mut namespaces = HashMap::new();
    for pid in crate::inventory::owners::all_pids() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.filter_map(Result::ok) {
            let path = task.path().join("ns/net");
            if let Ok(meta) = std::fs::metadata(&path) {
                namespaces.entry(meta.ino()).or_insert(path);
            }
        }
    }
    namespaces
}

/// The identity of the namespace at `path` (a thread's `ns/net`), if it still has the
/// inode `inode` once opened: the open file holds the namespace, so no other can take
/// the inode while its cookie is read, on a thread that enters it and ends.
pub fn identity_at(path: &Path, inode: u64) -> io::Result<Option<Identity>> {
    let file = File::open(path)?;
    if file.metadata()?.ino() != inode {
        return Ok(None);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(Some(Identity {
                    inode,
                    cookie: current_cookie()?,
                }))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the thread reading a namespace's cookie panicked",
                ))
            })
    })
}

/// The cookie of the calling thread's network namespace, read from a socket made in it
/// (a socket belongs to the namespace of the thread that made it; a Unix one needs no
/// network). `None` where the kernel does not know the option (before 5.14).
fn current_cookie() -> io::Result<Option<u64>> {
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    match NetnsCookie.get(&probe) {
        Ok(cookie) => Ok(Some(cookie)),
        Err(Errno::ENOPROTOOPT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_is_the_threads() {
        let netns = Netns::current().unwrap();
        assert_eq!(netns.identity().inode, current_inode().unwrap());
        assert_eq!(
            netns.identity().inode,
            std::fs::metadata("/proc/self/ns/net").unwrap().ino()
        );
    }

    #[test]
    fn directory_names_round_trip_in_canonical_spelling_only() {
        for identity in [
            Identity {
                inode: 4026531840,
                cookie: Some(1),
            },
            Identity {
                inode: 4026531840,
                cookie: None,
            },
        ] {
            assert_eq!(
                Identity::from_dir_name(&identity.dir_name()),
                Some(identity)
            );
        }
        assert_eq!(
            Identity::from_dir_name("netns-4026531840-17"),
            Some(Identity {
                inode: 4026531840,
                cookie: Some(17)
            })
        );
        for name in [
            "netns-",
            "netns-1-",
            "netns-01",
            "netns-1-02",
            "netns-1-2-3",
            "netns-+1",
            "netns-1/..",
            "port-1",
        ] {
            assert_eq!(Identity::from_dir_name(name), None, "{name}");
        }
    }

    #[test]
    fn this_namespace_has_a_stable_cookie() {
        // Linux 5.14+ (the project's machines run 6.x): the cookie is there.
        let ours = Identity::current().unwrap();
        assert!(ours.cookie.is_some(), "{ours:?}");
        assert_eq!(Identity::current().unwrap(), ours, "stable");
    }

    #[tokio::test]
    async fn work_runs_in_the_namespace_it_is_given() {
        // Entering the namespace we are in needs CAP_SYS_ADMIN like any setns.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let own = Netns::current().unwrap();
        let inode = own.identity().inode;
        let seen = run_in(own.file.try_clone().unwrap(), inode, || async move {
            Netns::current().unwrap().identity().inode
        })
        .await
        .unwrap();
        assert_eq!(seen, inode);
        let elsewhere = run_in(own.file.try_clone().unwrap(), inode + 1, || async {}).await;
        assert!(matches!(elsewhere, Err(EnterError::Moved { .. })));
    }
}

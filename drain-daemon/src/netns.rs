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
//! Steering, drain records and the daemon's client check name the namespace by the
//! inode of its nsfs file: unique among live namespaces, and what `ip netns` and `lsns`
//! show.

use std::{
    fs::File,
    future::Future,
    io,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
};

use nix::sched::{setns, CloneFlags};

/// The calling thread's network namespace in procfs.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// A network namespace: an open handle (which keeps it alive and is what programs are
/// attached to) and its identity.
#[derive(Debug)]
pub struct Netns {
    file: File,
    inode: u64,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        let file = File::open(THREAD_NETNS)?;
        let inode = file.metadata()?.ino();
        Ok(Netns { file, inode })
    }

    /// The namespace's identity: the inode of its nsfs file.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The handle, for attaching a program to the namespace.
    pub fn file(&self) -> &File {
        &self.file
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_namespace_is_the_threads() {
        let netns = Netns::current().unwrap();
        assert_eq!(netns.inode(), current_inode().unwrap());
        assert_eq!(
            netns.inode(),
            std::fs::metadata("/proc/self/ns/net").unwrap().ino()
        );
    }

    #[tokio::test]
    async fn work_runs_in_the_namespace_it_is_given() {
        // Entering the namespace we are in needs CAP_SYS_ADMIN like any setns.
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let own = Netns::current().unwrap();
        let inode = own.inode();
        let seen = run_in(own.file.try_clone().unwrap(), inode, || async move {
            Netns::current().unwrap().inode()
        })
        .await
        .unwrap();
        assert_eq!(seen, inode);
        let elsewhere = run_in(own.file.try_clone().unwrap(), inode + 1, || async {}).await;
        assert!(matches!(elsewhere, Err(EnterError::Moved { .. })));
    }
}

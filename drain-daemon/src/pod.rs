//! Who a peer on the pod socket is: its process, network and PID namespaces, from the
//! kernel.
//!
//! The pod socket (`drain-daemon --pod-socket`) serves Kubernetes pods whose containers
//! hold no capability: being able to connect is the authorisation (the operator mounts
//! the socket into the pods that may drain themselves). In exchange the daemon acts
//! only where the peer lives, and never where the peer *says* it lives: the network
//! namespace it drains in is the one the peer's process is in, entered through a pidfd
//! of the peer (`SO_PEERPIDFD`, which names the connecting process itself, not a pid
//! that could be reused; a kernel without it, before Linux 6.5, is refused: a pid read
//! with `SO_PEERCRED` may be another process's by the time it is opened), and the
//! processes it may act on are those of the peer's PID namespace ([`PidNamespace`]). A peer in the node's network namespace or the daemon's
//! PID namespace (a `hostNetwork` or `hostPID` pod) is refused: its scope would be the
//! node's. Which pod a peer belongs to, for its share of the daemon, is its PID
//! namespace's ancestor one level below the daemon's ([`key`]).
#![forbid(unsafe_code)]

pub mod key;

use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};

use nix::errno::Errno;
use rustix::{
    fs::{openat, statat, AtFlags, Mode, OFlags, CWD},
    process::Pid,
};
use tokio::net::UnixStream;

use crate::{
    failpoint::{self, Fault, Point},
    netns,
    pidns::PidNamespace,
};

use self::key::PodKey;

/// Why a pod peer is refused. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PodPeerError {
    #[error("SO_PEERCRED on the pod socket: {0}")]
    PeerCred(#[source] std::io::Error),
    #[error("the peer is not visible in drain-daemon's PID namespace: run drain-daemon with the host's PID namespace (hostPID: true)")]
    NotVisible,
    #[error("getsockopt(SO_PEERPIDFD) on the pod socket: this kernel cannot name a peer by a pidfd (Linux 6.5 or later can), and its pid alone could be another process's by the time it is opened: upgrade the node's kernel, or drain through the root control socket (drain-daemon --socket) with the capabilities of a drain")]
    NoPeerPidfd,
    #[error("getsockopt(SO_PEERPIDFD) on the pod socket: {0}: the peer cannot be named by a pidfd, most likely because it exited; drainctl waits for its reply, run it again")]
    PeerPidfd(#[source] nix::errno::Errno),
    #[error("opening the peer's /proc entry: {0}")]
    Proc(#[source] rustix::io::Errno),
    #[error("the peer exited while drain-daemon looked at it: run drainctl again")]
    Gone,
    #[error("stat of the peer's /proc entry ns/{kind}: {source}")]
    Namespace {
        kind: &'static str,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("reading drain-daemon's own namespaces: {0}")]
    Own(#[source] std::io::Error),
    #[error("the pod socket serves pods with network and PID namespaces of their own, and this peer shares the node's {0} namespace (hostNetwork or hostPID): use the root control socket with the capabilities of a drain")]
    HostNamespace(&'static str),
    #[error("drain-daemon cannot tell which pod the peer is in: none of its first {} ancestor processes (/proc/<pid>/status, PPid and NSpid) is in a PID namespace one level below drain-daemon's, as a container's processes are: run drainctl from a process the pod's container started (not one the node entered into a namespace nested in the pod), and again if the pod's processes were exiting", key::MAX_STEPS)]
    NoPod,
}

/// A peer on the pod socket, as the kernel describes it.
#[derive(Debug)]
pub struct PodPeer {
    /// The connecting process itself: what the drain's thread enters the network
    /// namespace of.
    pub pidfd: OwnedFd,
    /// Its network namespace's inode when it connected.
    pub netns: u64,
    /// Its PID namespace: the processes it may drain.
    pub pidns: PidNamespace,
    /// The pod it is in, for its share of the pod socket.
    pub pod: PodKey,
}

impl PodPeer {
    pub fn of(stream: &UnixStream) -> Result<PodPeer, PodPeerError> {
        let cred = stream.peer_cred().map_err(PodPeerError::PeerCred)?;
        // 0 or none: the peer is in a PID namespace the daemon cannot see into.
        let peer = cred
            .pid()
            .filter(|&pid| pid > 0)
            .and_then(Pid::from_raw)
            .ok_or(PodPeerError::NotVisible)?;
        let pid = peer.as_raw_pid();
        let pidfd = peer_pidfd(stream)?;
        let proc_dir = openat(
            CWD,
            format!("/proc/{pid}").as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(PodPeerError::Proc)?;
        // The pidfd names the peer; while it still has the number `pid` afterwards, the
        // /proc entry opened before was the peer's and not a reused pid's (an open
        // /proc/<pid> stays bound to its process).
        if pidfd_pid(&pidfd) != Some(pid) {
            return Err(PodPeerError::Gone);
        }
        let namespace = |kind: &'static str| {
            statat(&proc_dir, format!("ns/{kind}").as_str(), AtFlags::empty())
                .map(|stat| stat.st_ino)
                .map_err(|source| PodPeerError::Namespace { kind, source })
        };
        let netns = namespace("net")?;
        let pidns = PidNamespace::from_inode(namespace("pid")?);
        check_not_host(netns, pidns)?;
        Ok(PodPeer {
            pod: key::of(&proc_dir)?,
            netns,
            pidns,
            pidfd,
        })
    }
}

/// A pod in the node's network or PID namespace would have the node's scope. The node's
/// network namespace is init's (the daemon sees the host's processes), or the daemon's
/// own where it runs there.
fn check_not_host(netns: u64, pidns: PidNamespace) -> Result<(), PodPeerError> {
    let own_netns = netns::current_inode().map_err(PodPeerError::Own)?;
    let init_netns = statat(CWD, "/proc/1/ns/net", AtFlags::empty()).map(|stat| stat.st_ino);
    let own_pidns = PidNamespace::own().ok_or_else(|| {
        PodPeerError::Own(std::io::Error::other("/proc/self/ns/pid is unreadable"))
    })?;
    if netns == own_netns || init_netns == Ok(netns) {
        return Err(PodPeerError::HostNamespace("network"));
    }
    if pidns == own_pidns {
        return Err(PodPeerError::HostNamespace("PID"));
    }
    Ok(())
}

/// A pidfd of the connecting process: `SO_PEERPIDFD` (Linux 6.5+) names the process
/// that connected, and nothing else does. `pidfd_open` of the `SO_PEERCRED` pid would
/// name whichever process has that number now, another pod's once the peer exited and
/// the number was reused, so there is no fallback ([`judge_peer_pidfd`]).
fn peer_pidfd(stream: &UnixStream) -> Result<OwnedFd, PodPeerError> {
    let asked = match failpoint::hit(Point::PeerPidfd, 0) {
        Some(Fault::NoProtocolOption) => Err(Errno::ENOPROTOOPT),
        _ => nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerPidfd),
    };
    judge_peer_pidfd(asked)
}

/// What `SO_PEERPIDFD`'s answer makes of the peer: its pidfd, or a refusal that says
/// why. `ENOPROTOOPT` is a kernel without the option; any other error (an exited peer
/// is `ESRCH` or `EINVAL`, by kernel version) is this peer's.
fn judge_peer_pidfd(asked: Result<OwnedFd, Errno>) -> Result<OwnedFd, PodPeerError> {
    asked.map_err(|errno| match errno {
        Errno::ENOPROTOOPT => PodPeerError::NoPeerPidfd,
        errno => PodPeerError::PeerPidfd(errno),
    })
}

/// The pid a pidfd names now, from its fdinfo (`Pid:`); `None` once the process is gone
/// (the kernel then says -1).
fn pidfd_pid(pidfd: &impl AsFd) -> Option<i32> {
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/thread-self/fdinfo/{}",
        pidfd.as_fd().as_raw_fd()
    ))
    .ok()?;
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
        .filter(|&pid: &i32| pid > 0)
}

#[cfg(test)]
mod tests {
    use rustix::process::{pidfd_open, PidfdFlags};

    use super::*;

    #[test]
    fn a_peer_without_a_pidfd_from_the_kernel_is_refused_never_looked_up_by_pid() {
        let own = Pid::from_raw(std::process::id() as i32).unwrap();
        let pidfd = pidfd_open(own, PidfdFlags::empty()).unwrap();
        assert!(judge_peer_pidfd(Ok(pidfd)).is_ok());
        let old_kernel = judge_peer_pidfd(Err(Errno::ENOPROTOOPT)).unwrap_err();
        assert!(matches!(old_kernel, PodPeerError::NoPeerPidfd));
        assert!(
            old_kernel.to_string().contains("upgrade the node's kernel"),
            "{old_kernel}"
        );
        for exited in [Errno::ESRCH, Errno::EINVAL] {
            let err = judge_peer_pidfd(Err(exited)).unwrap_err();
            assert!(
                matches!(err, PodPeerError::PeerPidfd(errno) if errno == exited),
                "{err}"
            );
            assert!(err.to_string().contains("run it again"), "{err}");
        }
    }

    #[test]
    fn a_pidfd_names_its_process_until_it_exits() {
        let own = Pid::from_raw(std::process::id() as i32).unwrap();
        let pidfd = pidfd_open(own, PidfdFlags::empty()).unwrap();
        assert_eq!(pidfd_pid(&pidfd), Some(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id() as i32;
        let pidfd = pidfd_open(Pid::from_raw(child_pid).unwrap(), PidfdFlags::empty()).unwrap();
        child.wait().unwrap();
        assert_eq!(
            pidfd_pid(&pidfd),
            None,
            "a reaped child's pidfd names no pid"
        );
    }
}

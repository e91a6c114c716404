//! Who is asking, judged from the socket and never from the request: where a peer's
//! requests are carried out ([`Target`]) or why it is refused. On the root socket only
//! root peers with the capabilities of a drain are served, in the daemon's network
//! namespace; on the pod socket any peer is, in its own network and PID namespaces.

use std::io;

use tokio::net::UnixStream;

use super::pod_limits;
use crate::{
    capabilities,
    drain::{blocking, DrainPlan},
    pod::PodPeer,
};

/// Which rules a control socket's peers are served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `--socket`: root peers with the capabilities of a drain, in the daemon's network
    /// namespace (`Peer::may_drain`).
    Root,
    /// `--pod-socket`: any peer that can connect, acting only in its own network and
    /// PID namespaces ([`PodPeer`]).
    Pod,
}

/// Where a request is carried out, decided from the peer, never from the request.
pub(super) enum Target {
    /// The daemon's own network namespace, for a root peer in it.
    Own,
    /// A pod peer's namespaces.
    Pod(PodPeer),
}

/// Where a peer's requests are carried out and its network namespace, or the message
/// that refuses it.
pub(super) type Judgement = Result<(Target, u64), String>;

/// Judges the peer on a socket of `kind`. The `/proc` reads this takes are kept off the
/// async workers: a `/proc` read can wait on a stuck process.
pub(super) fn target_of(stream: &UnixStream, kind: SocketKind) -> io::Result<Judgement> {
    Ok(match kind {
        SocketKind::Root => {
            let peer = Peer::of(stream.peer_cred()?);
            let netns = peer.netns.unwrap_or_default();
            peer.may_drain().map(|()| (Target::Own, netns))
        }
        SocketKind::Pod => blocking::run(|| PodPeer::of(stream))
            .map(|peer| {
                let netns = peer.netns;
                (Target::Pod(peer), netns)
            })
            .map_err(|err| err.to_string()),
    })
}
/// A pod's plan names its `--pid` as the pod numbers it: the daemon's number of that
/// process, which must be in the pod's PID namespace. The lookup walks `/proc`, off
/// the async workers: a `/proc` read can wait on a stuck process.
pub(super) fn pod_plan(plan: &mut DrainPlan, peer: &PodPeer) -> Result<(), String> {
    pod_limits::check_plan(plan)?;
    if let Some(pid) = plan.pid {
        let Some(own_number) = blocking::run(|| peer.pidns.translate(pid)) else {
            return Err(format!(
                "--pid {pid}: no process {pid} in drainctl's PID namespace: a pod drains only its own processes"
            ));
        };
        plan.pid = Some(own_number);
    }
    Ok(())
}

/// What the kernel says of the process at the other end of a control connection
/// (`SO_PEERCRED`, then its `/proc` entry).
struct Peer {
    uid: u32,
    pid: Option<i32>,
    /// Its effective capabilities (`CapEff`), when its `/proc` entry could be read.
    capabilities: Option<u64>,
    /// Its network namespace's inode, likewise.
    netns: Option<u64>,
}

impl Peer {
    /// The peer of `cred`. Its `/proc` entry is read only for a root peer (a refusal
    /// needs no more than the uid), off the async workers: a `/proc` read can wait on a
    /// stuck process.
    fn of(cred: tokio::net::unix::UCred) -> Peer {
        let uid = cred.uid();
        let pid = cred.pid().filter(|_| uid == 0);
        let (capabilities, netns) = blocking::run(|| {
            let Some(pid) = pid else {
                return (None, None);
            };
            let capabilities = capabilities::of(pid);
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta));
            (capabilities, netns)
        });
        Peer {
            uid,
            pid: cred.pid(),
            capabilities,
            netns,
        }
    }

    /// Root with the capabilities a drain needs; the message says what is missing.
    fn may_drain(&self) -> Result<(), String> {
        if self.uid != 0 {
            return Err("drain-daemon serves root only: run drainctl as root".into());
        }
        let Some(capabilities) = self.capabilities else {
            return Err(format!(
                "drain-daemon cannot read the capabilities of its peer (pid {:?}): run drainctl in the daemon's PID namespace",
                self.pid
            ));
        };
        let missing = capabilities::missing(capabilities);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "drain-daemon does for its peers only what they could do themselves: drainctl lacks {}",
                missing.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_needs_root_and_the_capabilities_of_a_drain() {
        let peer = |capabilities| Peer {
            uid: 0,
            pid: Some(1),
            capabilities,
            netns: Some(1),
        };
        assert!(peer(Some(0x1ff_ffff_ffff)).may_drain().is_ok());
        let none = peer(Some(0)).may_drain().unwrap_err();
        assert!(
            none.contains("CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_BPF"),
            "{none}"
        );
        assert!(peer(None).may_drain().is_err());
    }
}

//! The listeners new connections go to while the drained ones are refused them: the
//! drained port's other listeners, or those on `--successor-port`. Chosen at the attach
//! and again at every pass, as successors start and stop.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, OwnedFd},
};

use tracing::{debug, info, warn};

use super::{held_in, setup::borrow_listener, DrainPlan};
use crate::{inventory::Listener, pidns::PidNamespace, steer::Steering};

/// Which of a scan's listeners take the new connections.
#[derive(Clone, Copy)]
pub(super) enum SuccessorsAre<'a> {
    /// The drained port's listeners that are not draining.
    OtherListeners { draining: &'a HashSet<u64> },
    /// Those on this other port (`--successor-port`), held by a process of the scope
    /// when there is one.
    OnPort {
        port: u16,
        scope: Option<PidNamespace>,
    },
}

impl<'a> SuccessorsAre<'a> {
    pub(super) fn from_plan(
        plan: &DrainPlan,
        draining: &'a HashSet<u64>,
        scope: Option<PidNamespace>,
    ) -> Self {
        match plan.successor_port {
            Some(port) => SuccessorsAre::OnPort { port, scope },
            None => SuccessorsAre::OtherListeners { draining },
        }
    }

    fn include(self, listener: &Listener) -> bool {
        match self {
            SuccessorsAre::OtherListeners { draining } => {
                !draining.contains(&listener.socket.inode)
            }
            SuccessorsAre::OnPort { port, scope } => {
                listener.socket.id.local.port() == port && held_in(scope, listener)
            }
        }
    }
}

/// Hands new connections to the successors when the set of them changed since the last
/// pass: one started after the drain, or one closed.
pub(super) fn update_successors(
    steering: &mut Steering,
    port: u16,
    listeners: &[Listener],
    successors_are: SuccessorsAre<'_>,
    current: &mut HashSet<u64>,
) {
    let room = steering.successor_room();
    let found = choose_successors(port, listeners, successors_are, room, current);
    let inodes: HashSet<u64> = found.iter().map(|l| l.socket.inode).collect();
    if inodes == *current {
        return;
    }
    let (borrowed, sockets) = borrow_successors(port, found);
    if borrowed == *current {
        return;
    }
    let fds: Vec<_> = sockets.iter().map(|fd| fd.as_fd()).collect();
    match steering.set_successors(&fds) {
        Ok(()) => {
            info!(
                port,
                successors = fds.len(),
                "new connections go to the successor listeners"
            );
            *current = borrowed;
        }
        Err(err) => warn!("cannot hand new connections to the successors: {err}"),
    }
}

/// The listeners of a scan that take the new connections, at most `room`: the same ones
/// (by inode) at every pass when there are more, so the set does not churn (`current`
/// is the set steered to now, to warn only when it changes).
pub(super) fn choose_successors<'l>(
    port: u16,
    listeners: &'l [Listener],
    successors_are: SuccessorsAre<'_>,
    room: usize,
    current: &HashSet<u64>,
) -> Vec<&'l Listener> {
    let mut found: Vec<&Listener> = listeners
        .iter()
        .filter(|listener| successors_are.include(listener))
        .collect();
    if found.len() > room {
        // Part of the group rather than a refusal of every new connection.
        found.sort_unstable_by_key(|listener| listener.socket.inode);
        if found
            .iter()
            .take(room)
            .map(|l| l.socket.inode)
            .collect::<HashSet<_>>()
            != *current
        {
            warn!(
                port,
                "{} successor listeners, more than the {room} the steering holds: new connections go to {room} of them",
                found.len()
            );
        }
        found.truncate(room);
    }
    found
}

/// Duplicates each successor listener from one of its owners: the inodes of those
/// borrowed, and their descriptors. One that cannot be borrowed now (its owner not yet
/// visible, a process starting, or closed since the scan) is left out, to be tried again
/// at the next pass.
pub(super) fn borrow_successors<'l>(
    port: u16,
    successors: impl IntoIterator<Item = &'l Listener>,
) -> (HashSet<u64>, Vec<OwnedFd>) {
    let mut borrowed = HashSet::new();
    let mut sockets: Vec<OwnedFd> = Vec::new();
    for listener in successors {
        match borrow_listener(port, listener) {
            Ok(Some(socket)) => {
                borrowed.insert(listener.socket.inode);
                sockets.push(socket);
            }
            Ok(None) => debug!(
                port,
                inode = listener.socket.inode,
                "a successor listener was closed since the scan"
            ),
            Err(err) => debug!(
                port,
                inode = listener.socket.inode,
                "cannot borrow a successor listener yet: {err}"
            ),
        }
    }
    (borrowed, sockets)
}

//! Which pod a peer on the pod socket is, for its share of the daemon
//! ([`crate::control::pod_quota`]): a key the pod cannot multiply.
//!
//! The peer's network namespace will not do, nor its PID namespace: a pod that may
//! create user namespaces (`unshare -Urnpf`) makes as many of both as it likes, and
//! each would be a pod with a share of its own. What no pod can make is a PID namespace
//! one level below the daemon's: a new PID namespace is a child of its creator's, and
//! `setns` enters only the caller's namespace's descendants. So the key is the peer's
//! PID namespace's ancestor at level 1 (the daemon's being level 0): the namespace the
//! container runtime made for the container, shared by everything the container starts,
//! however deep it nests.
//!
//! The kernel names that ancestor through `NS_GET_PARENT`, an ioctl with no safe wrapper
//! (this crate has no `unsafe`); procfs tells it too. A process's parent is in the
//! process's PID namespace or an ancestor of it (a child is born in its parent's
//! namespace or below, and an orphan is reparented within its own), and `NSpid:` in
//! `/proc/<pid>/status` lists a pid for each level from the reader's to the process's,
//! so its length is the process's level plus one. The first process of level 1 on the
//! way up the peer's `PPid:` chain is therefore in the namespace sought.
//!
//! Races: an ancestor may exit, and its pid be reused, while the walk reads it. A parent
//! opened by pid counts only if its child still names it as parent once it is open (an
//! open `/proc/<pid>` stays bound to its process, and a live parent's pid is not
//! reused), and a parent below its child, which the kernel never makes, is a reused pid;
//! either way the walk starts again from the peer, whose entry is held. The key decides
//! only a pod's share, never what a drain acts on, so a key read wrong in a race costs
//! fairness, not scope. A walk that reaches level 0 (a process the node started into a
//! namespace nested in a pod: only the node's root can) or takes [`MAX_STEPS`] steps
//! gives no key, and the peer is refused ([`PodPeerError::NoPod`]): a key of its own
//! would be one more share for whoever can get into that state again.

use std::{
    io::Read as _,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use rustix::fs::{openat, statat, AtFlags, Mode, OFlags, CWD};

use super::PodPeerError;

/// A pod, as its share of the pod socket is counted: the inode of the PID namespace at
/// level 1 that the peer's is, or descends from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodKey(u64);

impl PodKey {
    pub const fn from_inode(inode: u64) -> Self {
        PodKey(inode)
    }
}

/// Processes read on the way up before giving up, restarts included: a container's
/// processes are a few forks below its first, and only a pod that builds a longer chain
/// on purpose goes past this, which refuses only itself.
pub const MAX_STEPS: usize = 64;

/// The deepest PID namespace level the kernel makes (`MAX_PID_NS_LEVEL`).
const MAX_LEVEL: usize = 32;

/// A `status` file is about 1.5 KiB; a longer one is not the kernel's.
const MAX_STATUS_BYTES: u64 = 16 * 1024;

/// Where a process stands, from its `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    /// Its parent's pid as the daemon numbers it; 0 for none (a namespace's first
    /// process seen from inside it, or the kernel's).
    ppid: i32,
    /// Its PID namespace's level below the daemon's.
    level: usize,
}

/// The key of the peer whose `/proc/<pid>` directory is `peer` (opened and checked to be
/// the peer's by the caller).
pub(super) fn of(peer: &OwnedFd) -> Result<PodKey, PodPeerError> {
    let mut steps = 0;
    'from_the_peer: loop {
        let mut place = read_place(peer.as_fd()).ok_or(PodPeerError::Gone)?;
        let mut ancestor: Option<OwnedFd> = None;
        loop {
            let current = ancestor.as_ref().map_or(peer.as_fd(), AsFd::as_fd);
            if place.level == 1 {
                match statat(current, "ns/pid", AtFlags::empty()) {
                    Ok(stat) => return Ok(PodKey(stat.st_ino)),
                    Err(source) if ancestor.is_none() => {
                        return Err(PodPeerError::Namespace {
                            kind: "pid",
                            source,
                        })
                    }
                    // The ancestor exited after its status was read.
                    Err(_) => continue 'from_the_peer,
                }
            }
            steps += 1;
            if place.level == 0 || place.ppid <= 0 || steps > MAX_STEPS {
                return Err(PodPeerError::NoPod);
            }
            let parent = open_proc(place.ppid);
            let still = read_place(current);
            let parent_place = parent.as_ref().ok().and_then(|dir| read_place(dir.as_fd()));
            match (parent, still, parent_place) {
                (Ok(parent), Some(still), Some(up))
                    if still.ppid == place.ppid && up.level <= place.level =>
                {
                    ancestor = Some(parent);
                    place = up;
                }
                _ => continue 'from_the_peer,
            }
        }
    }
}

fn open_proc(pid: i32) -> rustix::io::Result<OwnedFd> {
    openat(
        CWD,
        format!("/proc/{pid}").as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The place of the process whose `/proc/<pid>` is `dir`; `None` once it has exited or
/// its status does not read as the kernel writes it.
fn read_place(dir: BorrowedFd<'_>) -> Option<Place> {
    let file = openat(
        dir,
        "status",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut status = String::new();
    std::fs::File::from(file)
        .take(MAX_STATUS_BYTES)
        .read_to_string(&mut status)
        .ok()?;
    parse_place(&status)
}

/// `PPid:` and the length of `NSpid:` in a `status` file. Only a line that starts with
/// the field counts, the first one: `Name:`, the only field a process writes, comes
/// first, and the kernel escapes the line ends in it.
fn parse_place(status: &str) -> Option<Place> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then_some(value)
        })
    };
    let ppid = field("PPid")?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|&ppid| ppid >= 0)?;
    let mut pids = 0;
    for pid in field("NSpid")?.split_whitespace() {
        pid.parse::<i32>().ok().filter(|&pid| pid > 0)?;
        pids += 1;
        if pids > MAX_LEVEL + 1 {
            return None;
        }
    }
    Some(Place {
        ppid,
        level: pids.checked_sub(1)?,
    })
}

#[cfg(test)]
#[path = "key_tests.rs"]
mod tests;

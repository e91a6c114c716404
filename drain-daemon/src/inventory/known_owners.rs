//! Socket owners remembered between scans, so a drain's pass does not walk every
//! descriptor of its server's process family again.
//!
//! A drain scans its port every poll interval, and the connections it watches are
//! almost all the ones it saw at the previous pass: their owners (pid, descriptor) do
//! not move. Walking the family's descriptor tables (and every process's parent, to keep
//! the family current) each pass was most of a drain's CPU time under load, and it grew
//! with every descriptor the family holds (a supervisor or init among the ancestors has
//! hundreds). Here each remembered owner is checked with one `readlink` of
//! `/proc/<pid>/fd/<fd>`: it still names the socket's inode, or the owner is forgotten
//! and the socket looked for again. Only sockets no remembered owner holds make the
//! caller walk the family.
//!
//! A socket the walk did not find (held outside the family: a successor's process in
//! another PID namespace, a connection handed elsewhere) is looked for at the next walk
//! too, since a socket accepted a moment ago may not be in its process's table yet; after
//! [`MISSES_BEFORE_UNKNOWN`] walks it counts as held outside the family and stops causing
//! walks, until the family or the tracked processes change.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};

use rustix::fs::{readlinkat, CWD};

use super::owners::{socket_inode, Owners, SocketOwner};

/// Walks a socket must be missing from before it stops causing walks.
pub const MISSES_BEFORE_UNKNOWN: u32 = 2;

/// Owners found by earlier walks, by socket inode.
#[derive(Debug, Default)]
pub struct KnownOwners {
    owners: Owners,
    /// Sockets the walks did not find, and how many walks missed them.
    misses: HashMap<u64, u32>,
}

impl KnownOwners {
    /// The remembered owners of `wanted` that still hold their socket; forgets the
    /// others and everything not wanted any more (closed sockets).
    pub fn still_held(&mut self, wanted: &HashSet<u64>) -> Owners {
        self.owners.retain(|inode, owners| {
            wanted.contains(inode) && {
                owners.retain(|owner| holds(owner, *inode));
                !owners.is_empty()
            }
        });
        self.misses.retain(|inode, _| wanted.contains(inode));
        self.owners.clone()
    }

    /// Of `wanted`, the sockets with no remembered owner that a walk should look for.
    pub fn to_look_for(&self, wanted: &HashSet<u64>) -> HashSet<u64> {
        wanted
            .iter()
            .filter(|inode| !self.owners.contains_key(inode))
            .filter(|inode| {
                self.misses
                    .get(inode)
                    .is_none_or(|&misses| misses < MISSES_BEFORE_UNKNOWN)
            })
            .copied()
            .collect()
    }

    /// Remembers the owners a walk for `looked_for` found (besides those known) and
    /// counts a miss for each socket of `looked_for` it did not find.
    pub fn learn(&mut self, looked_for: &HashSet<u64>, found: &Owners) {
        for inode in looked_for.iter().filter(|inode| !found.contains_key(inode)) {
            *self.misses.entry(*inode).or_default() += 1;
        }
        for (inode, owners) in found {
            self.misses.remove(inode);
            let known = self.owners.entry(*inode).or_default();
            for owner in owners {
                if !known.contains(owner) {
                    known.push(owner.clone());
                }
            }
        }
    }

    /// The set of processes walked changed: sockets missed before may be found now.
    pub fn forget_misses(&mut self) {
        self.misses.clear();
    }

    /// Forgets everything (the listeners changed: the next search starts afresh).
    pub fn clear(&mut self) {
        self.owners.clear();
        self.misses.clear();
    }
}

/// Whether descriptor `owner.fd` of `owner.pid` is socket `inode` now.
fn holds(owner: &SocketOwner, inode: u64) -> bool {
    let path = format!("/proc/{}/fd/{}", owner.pid, owner.fd);
    readlinkat(CWD, path.as_str(), Vec::new())
        .ok()
        .and_then(|target| socket_inode(target.as_bytes()))
        == Some(inode)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;
    use crate::inventory::owners::tests::inode_of;

    fn me(fd: i32) -> SocketOwner {
        SocketOwner {
            pid: std::process::id() as i32,
            fd,
            command: String::new(),
        }
    }

    #[test]
    fn an_owner_is_kept_while_it_holds_the_socket_and_forgotten_after() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = listener.as_raw_fd();
        let inode = inode_of(fd);
        let wanted = HashSet::from([inode]);
        let mut known = KnownOwners::default();
        assert_eq!(known.to_look_for(&wanted), wanted);
        known.learn(&wanted, &Owners::from([(inode, vec![me(fd)])]));
        assert_eq!(known.still_held(&wanted)[&inode], vec![me(fd)]);
        assert!(known.to_look_for(&wanted).is_empty());
        drop(listener);
        // A descriptor that holds another socket (a number reused) is not believed.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stale = KnownOwners::default();
        stale.learn(
            &wanted,
            &Owners::from([(inode, vec![me(other.as_raw_fd())])]),
        );
        assert!(stale.still_held(&wanted).is_empty());
        assert_eq!(stale.to_look_for(&wanted), wanted);
        // A socket gone from the scan is forgotten.
        assert!(known.still_held(&HashSet::new()).is_empty());
        assert_eq!(known.to_look_for(&wanted), wanted);
    }

    #[test]
    fn a_socket_missed_by_enough_walks_stops_causing_walks_until_misses_are_forgotten() {
        let wanted = HashSet::from([7_u64]);
        let mut known = KnownOwners::default();
        for _ in 0..MISSES_BEFORE_UNKNOWN {
            assert_eq!(known.to_look_for(&wanted), wanted);
            known.learn(&wanted, &Owners::new());
        }
        assert!(known.to_look_for(&wanted).is_empty());
        known.forget_misses();
        assert_eq!(known.to_look_for(&wanted), wanted);
    }
}

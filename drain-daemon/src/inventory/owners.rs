//! Which processes hold a socket, found by walking `/proc/<pid>/fd`.
//!
//! sock_diag names a socket by inode but not by process; closing a connection gracefully
//! and putting a listener in the steering map both need a (pid, fd) that holds it. A
//! listener shared by a process tree (nginx master and workers) has several owners.
//!
//! Reading descriptors is the expensive part of an inventory on a busy host: the kernel
//! spends microseconds per `/proc/<pid>/fd/<n>`, so 400k descriptors take seconds. The
//! walk therefore reads as few processes as it can:
//!
//! 1. To find the listeners' owners it visits processes in the caller's network
//!    namespace first, then the others, and stops as soon as every listener has one
//!    owner. Listeners are opened early, so it first probes only descriptors 0..64 of
//!    each process (by number, without listing the table), and lists whole tables only
//!    for listeners still missing.
//! 2. The other owners of a listener are its first owner's family (a listener is
//!    shared by fork, or handed down by a supervisor): ancestors and descendants, from
//!    one read of every process's parent id. Only they are read for the remaining
//!    owners and for the connections, which the listener's owners accepted. When only
//!    listeners are wanted (`drainctl status`), the family is probed at the descriptor
//!    numbers the first owners used (fork keeps them) and the low ones.
//!
//! 3. Between the scans of a drain, owners found are remembered and each is checked with
//!    one `readlink` ([`super::known_owners`]); the family is walked again (and its
//!    membership re-read) only for a socket no known owner holds.
//!
//! Sockets held by unrelated processes (other ports, other services) are never read, so
//! the cost does not grow with them. A connection handed to a process outside that
//! family has no known owner, and a drain leaves it alone: nothing proves it is the
//! drain's. A caller can add processes to read whatever listeners they hold
//! ([`OwnerFinder::track`]): a drain keeps reading the servers it started with after
//! they close their listeners.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    os::fd::OwnedFd,
};

use rustix::fs::{openat, readlinkat, statat, AtFlags, Dir, Mode, OFlags, CWD};

use super::known_owners::KnownOwners;

/// One process's descriptor for a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub pid: i32,
    pub fd: i32,
    /// The process's command name (`/proc/<pid>/comm`).
    pub command: String,
}

/// Socket inode -> the descriptors holding it.
pub type Owners = HashMap<u64, Vec<SocketOwner>>;

/// Finds socket owners, remembering the listener owners' family and the owners found
/// between scans.
#[derive(Debug, Default)]
pub struct OwnerFinder {
    /// The processes that may hold the listeners and their connections.
    family: Vec<i32>,
    listeners_seen: HashSet<u64>,
    /// Processes always read for connections, listeners or not, ascending.
    tracked: Vec<i32>,
    /// Owners found by earlier walks, checked before they are believed again.
    known: KnownOwners,
    /// The processes read for new connections: the listeners' holders, their
    /// descendants and the tracked processes, ascending.
    walked: Vec<i32>,
}

impl OwnerFinder {
    /// Reads `pids` for connections in every later search, whether or not they still
    /// hold a listener (replaces the previous set).
    pub fn track(&mut self, pids: impl IntoIterator<Item = i32>) {
        let mut tracked: Vec<i32> = pids.into_iter().collect();
        tracked.sort_unstable();
        tracked.dedup();
        if tracked != self.tracked {
            self.known.forget_misses();
            self.tracked = tracked;
        }
    }

    /// The processes set by [`OwnerFinder::track`].
    pub fn tracked(&self) -> impl Iterator<Item = i32> + '_ {
        self.tracked.iter().copied()
    }

    /// The family and the tracked processes, ascending.
    fn readable(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.family.iter().chain(&self.tracked).copied().collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The owners of `listeners` and `connections` (socket inodes). Connections are only
    /// looked for in the listener owners' family. Owners found before are believed while
    /// they still hold their socket ([`KnownOwners`]); the family's descriptors are walked
    /// again only for sockets no known owner holds.
    pub fn find(&mut self, listeners: &HashSet<u64>, connections: &HashSet<u64>) -> Owners {
        let known = !self.family.is_empty() && listeners.is_subset(&self.listeners_seen);
        let wanted: HashSet<u64> = listeners.union(connections).copied().collect();
        if known && !connections.is_empty() {
            let mut owners = self.known.still_held(&wanted);
            let every_listener_held = listeners.iter().all(|inode| owners.contains_key(inode));
            let look_for = self.known.to_look_for(&wanted);
            if every_listener_held && look_for.is_empty() {
                return owners;
            }
            if every_listener_held {
                // A new connection: it was accepted by a listener's holder (or a process
                // it started, or a tracked one). Their descriptors that hold no known
                // socket are read, for it and for new holders of the listeners (a
                // reloaded worker).
                let holders = owners
                    .iter()
                    .filter(|(inode, _)| listeners.contains(inode))
                    .flat_map(|(_, found)| found.iter().map(|owner| owner.pid));
                let mut walked: Vec<i32> = descendants(holders).into_iter().collect();
                walked.extend(&self.tracked);
                walked.sort_unstable();
                walked.dedup();
                if walked != self.walked {
                    self.known.forget_misses();
                    self.walked = walked;
                }
                let known_fds: HashSet<(i32, i32)> = owners
                    .values()
                    .flatten()
                    .map(|owner| (owner.pid, owner.fd))
                    .collect();
                let search: HashSet<u64> = listeners.union(&look_for).copied().collect();
                let reading = Reading::AllBut(known_fds);
                let found = read_processes(&search, &self.walked, &reading);
                self.known.learn(&look_for, &found);
                for (inode, more) in found {
                    owners.entry(inode).or_default().extend(more);
                }
                return owners;
            }
        }
        let first = find_first_owners(listeners);
        self.family = family_of(&first, listeners);
        self.listeners_seen = listeners.clone();
        self.known.clear();
        // Connections need every descriptor read. Listeners alone: forked processes hold
        // them under the same numbers as the owner found first, so only those numbers
        // (and the low ones) are probed in the rest of the family.
        let reading = if connections.is_empty() {
            let mut fds: Vec<i32> = LOW_FDS
                .chain(first.values().flatten().map(|o| o.fd))
                .collect();
            fds.sort_unstable();
            fds.dedup();
            Reading::Only(fds)
        } else {
            Reading::Everything
        };
        let owners = read_processes(&wanted, &self.readable(), &reading);
        if !connections.is_empty() {
            self.known.learn(&wanted, &owners);
        }
        owners
    }
}

/// Which of `inodes` (sockets) some process holds, wherever it is: every descriptor of
/// every process is read, so this is for rare checks (a sweep), not for a drain's scans.
pub fn held_by_any_process(inodes: &HashSet<u64>) -> HashSet<u64> {
    read_processes(inodes, &all_pids(), &Reading::Everything)
        .into_keys()
        .collect()
}

/// Visits processes (this network namespace first) until every listener has an owner.
fn find_first_owners(listeners: &HashSet<u64>) -> Owners {
    let mut owners = Owners::new();
    if listeners.is_empty() {
        return owners;
    }
    // The drain's thread's namespace: the daemon drains a pod's on a thread of its own.
    let own_netns = crate::netns::current_inode();
    let (near, far): (Vec<i32>, Vec<i32>) = all_pids().into_iter().partition(|pid| {
        let netns = statat(
            CWD,
            format!("/proc/{pid}/ns/net").as_str(),
            AtFlags::empty(),
        );
        matches!((&netns, &own_netns), (Ok(theirs), Ok(ours)) if theirs.st_ino == *ours)
    });
    let order: Vec<i32> = near.into_iter().chain(far).collect();
    let mut missing = listeners.clone();
    // Listeners are opened early: probing the low descriptor numbers of each process
    // usually finds them all without listing any large descriptor table.
    let low: Vec<i32> = LOW_FDS.collect();
    for reading in [Reading::Only(low), Reading::Everything] {
        for &pid in &order {
            if missing.is_empty() {
                return owners;
            }
            for (inode, found) in read_processes(&missing, &[pid], &reading) {
                missing.remove(&inode);
                owners.entry(inode).or_default().extend(found);
            }
        }
    }
    owners
}

/// The owners of the listeners, their ancestors and their descendants, ascending.
fn family_of(owners: &Owners, listeners: &HashSet<u64>) -> Vec<i32> {
    let roots: HashSet<i32> = listeners
        .iter()
        .filter_map(|inode| owners.get(inode))
        .flatten()
        .map(|owner| owner.pid)
        .collect();
    if roots.is_empty() {
        return Vec::new();
    }
    let parents = parent_map();
    let mut family = roots.clone();
    for &root in &roots {
        let mut pid = root;
        while let Some(&parent) = parents.get(&pid) {
            // pid 0 is the kernel; pid 1 holds no server sockets worth a look but may
            // (socket activation), so it stays in.
            if parent == 0 || !family.insert(parent) {
                break;
            }
            pid = parent;
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&child, &parent) in &parents {
        children.entry(parent).or_default().push(child);
    }
    let mut stack: Vec<i32> = roots.into_iter().collect();
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if family.insert(child) {
                stack.push(child);
            }
        }
    }
    let mut family: Vec<i32> = family.into_iter().collect();
    family.sort_unstable();
    family
}

/// `pid` and every process descending from it.
pub fn process_tree(pid: i32) -> HashSet<i32> {
    descendants([pid])
}

/// `roots` and every process descending from them.
fn descendants(roots: impl IntoIterator<Item = i32>) -> HashSet<i32> {
    let mut tree: HashSet<i32> = roots.into_iter().collect();
    if tree.is_empty() {
        return tree;
    }
    let parents = parent_map();
    // Parents precede children in no particular order: repeat until nothing is added.
    loop {
        let before = tree.len();
        for (&child, parent) in &parents {
            if tree.contains(parent) {
                tree.insert(child);
            }
        }
        if tree.len() == before {
            return tree;
        }
    }
}

/// pid -> parent pid, from `/proc/<pid>/stat`.
fn parent_map() -> HashMap<i32, i32> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect()
}

/// When `pid` started (clock ticks after boot), `None` once it is gone. A pid with
/// another start time is another process that reuses the number.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|stat| stat.starttime)
}

/// `/proc/<pid>/stat`, parsed by the procfs crate (a command name may hold spaces and
/// parentheses). Measured here against a hand-written parse of the two fields used, on
/// 160 processes: 1.0x to 1.2x the time (about 11 µs a process), a small price on these
/// paths (the parent map is read when the listeners' family is searched, start times
/// once per owner and scan).
fn stat(pid: i32) -> Option<procfs::process::Stat> {
    procfs::process::Process::new(pid).ok()?.stat().ok()
}

/// The descriptor numbers probed first for listeners.
const LOW_FDS: std::ops::Range<i32> = 0..64;

/// Which of a process's descriptors to read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reading {
    Everything,
    /// Every descriptor but these (pid, fd): they hold sockets already known.
    AllBut(HashSet<(i32, i32)>),
    /// Only these descriptor numbers (no listing of the table).
    Only(Vec<i32>),
}

/// Maps each of `inodes` to the descriptors of `pids` that hold it. Processes that
/// vanish or cannot be read are skipped.
///
/// Hand-written rather than procfs's `Process::fd` / `fd_from_fd`, because it is
/// measurably faster where a drain spends its time (median of 21 interleaved runs on this
/// project's 2-core machine, release build, load about 6): a table of 10,000 sockets in
/// 40 ms against 57 ms (procfs 1.4x), and descriptors 0..64 of 160 processes probed by
/// number in 21 ms against 34 ms (procfs 1.6x). One descriptor of `/proc/<pid>/fd`
/// serves every `readlinkat`, and the link buffer is reused.
fn read_processes(inodes: &HashSet<u64>, pids: &[i32], reading: &Reading) -> Owners {
    let mut owners = Owners::new();
    if inodes.is_empty() {
        return owners;
    }
    let mut link = Vec::with_capacity(64);
    for &pid in pids {
        let Ok(fd_dir) = open_dir(&format!("/proc/{pid}/fd")) else {
            continue;
        };
        let listed: Vec<(i32, std::ffi::CString)>;
        let fds: Box<dyn Iterator<Item = (i32, &CStr)>> = match reading {
            Reading::Everything | Reading::AllBut(_) => {
                let Ok(entries) = Dir::read_from(&fd_dir) else {
                    continue;
                };
                let skip = |fd: i32| match reading {
                    Reading::AllBut(known) => known.contains(&(pid, fd)),
                    _ => false,
                };
                listed = entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        let fd = parse_number::<i32>(entry.file_name())?;
                        (!skip(fd)).then(|| (fd, entry.file_name().to_owned()))
                    })
                    .collect();
                Box::new(listed.iter().map(|(fd, name)| (*fd, name.as_c_str())))
            }
            Reading::Only(numbers) => {
                listed = numbers
                    .iter()
                    .filter_map(|fd| Some((*fd, std::ffi::CString::new(fd.to_string()).ok()?)))
                    .collect();
                Box::new(listed.iter().map(|(fd, name)| (*fd, name.as_c_str())))
            }
        };
        let mut command = None;
        for (fd, name) in fds {
            let Ok(target) = readlinkat(&fd_dir, name, std::mem::take(&mut link)) else {
                continue;
            };
            let inode = socket_inode(target.as_bytes());
            link = target.into_bytes_with_nul();
            link.clear();
            let Some(inode) = inode.filter(|inode| inodes.contains(inode)) else {
                continue;
            };
            let command = command.get_or_insert_with(|| command_of(pid)).clone();
            owners
                .entry(inode)
                .or_default()
                .push(SocketOwner { pid, fd, command });
        }
    }
    owners
}

pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(proc_dir) = open_dir("/proc") else {
        return Vec::new();
    };
    let Ok(entries) = Dir::read_from(&proc_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| parse_number(entry.file_name()))
        .collect()
}

fn open_dir(path: &str) -> rustix::io::Result<OwnedFd> {
    openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn command_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim_end().to_string())
        .unwrap_or_default()
}

fn parse_number<T: std::str::FromStr>(name: &CStr) -> Option<T> {
    name.to_str().ok()?.parse().ok()
}

/// `socket:[12345]` -> 12345.
pub(super) fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};

    use super::*;

    /// The inode of this process's descriptor `fd`.
    pub(in crate::inventory) fn inode_of(fd: i32) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    #[test]
    fn socket_links_are_parsed() {
        assert_eq!(socket_inode(b"socket:[4026]"), Some(4026));
        assert_eq!(socket_inode(b"pipe:[4026]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
    }

    #[test]
    fn finds_this_process_as_owner_of_its_listener_and_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let me = std::process::id() as i32;
        let listener_inode = inode_of(listener.as_raw_fd());
        let accepted_inode = inode_of(accepted.as_raw_fd());
        let mut finder = OwnerFinder::default();
        for _ in 0..2 {
            let owners = finder.find(
                &HashSet::from([listener_inode]),
                &HashSet::from([accepted_inode]),
            );
            assert_eq!(
                owners[&listener_inode],
                vec![SocketOwner {
                    pid: me,
                    fd: listener.as_raw_fd(),
                    command: command_of(me)
                }]
            );
            assert_eq!(owners[&accepted_inode][0].fd, accepted.as_raw_fd());
            assert!(finder.family.contains(&me));
        }
        drop(client);
    }

    #[test]
    fn a_child_holding_the_listener_is_found_as_second_owner() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listener_inode = inode_of(listener.as_raw_fd());
        // dup(2) does not set CLOEXEC: the child inherits this copy of the listener, as
        // a forked worker or a socket-activated service does.
        let inherited = rustix::io::dup(&listener).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        drop(inherited);
        let owners = OwnerFinder::default().find(&HashSet::from([listener_inode]), &HashSet::new());
        let pids: HashSet<i32> = owners[&listener_inode].iter().map(|o| o.pid).collect();
        // A child another test thread spawns meanwhile inherits the copy too: more
        // owners are possible, these two are certain.
        let expected = HashSet::from([std::process::id() as i32, child.id() as i32]);
        assert!(pids.is_superset(&expected), "{pids:?}");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_process_tree_holds_the_process_and_its_descendants_only() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let child_pid = child.id() as i32;
        let me = std::process::id() as i32;
        let tree = process_tree(me);
        assert!(tree.contains(&me) && tree.contains(&child_pid), "{tree:?}");
        assert!(!tree.contains(&1), "{tree:?}");
        assert_eq!(process_tree(child_pid), HashSet::from([child_pid]));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_process_keeps_its_start_time_and_a_gone_one_has_none() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }

    #[test]
    fn a_tracked_process_is_read_for_connections_without_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(listener);
        let accepted_inode = inode_of(accepted.as_raw_fd());
        let mut finder = OwnerFinder::default();
        let wanted = HashSet::from([accepted_inode]);
        assert!(finder.find(&HashSet::new(), &wanted).is_empty());
        finder.track([std::process::id() as i32]);
        let owners = finder.find(&HashSet::new(), &wanted);
        assert_eq!(owners[&accepted_inode][0].fd, accepted.as_raw_fd());
        drop(client);
    }

    #[test]
    fn parents_are_read_from_stat() {
        let parents = parent_map();
        let me = std::process::id() as i32;
        assert_eq!(
            parents.get(&me),
            Some(&std::os::unix::process::parent_id().try_into().unwrap())
        );
    }
}

//! Which processes hold a socket, found by walking `/proc/<pid>/fd`.
//!
//! sock_diag names a socket by inode but not by process; closing a connection gracefully
//! and putting a listener in the steering map both need a (pid, fd) that holds it. A
//! listener shared by a process tree (nginx master and workers) has several owners.

use std::collections::{HashMap, HashSet};

use procfs::process::{all_processes, FDTarget, Process};

/// One process's descriptor for a socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub pid: i32,
    pub fd: i32,
    /// The process's command name (`/proc/<pid>/comm`).
    pub command: String,
}

/// Maps each of `inodes` to the descriptors that hold it. When `only_pids` is given, only
/// those processes are read (the cheap path once the listener owners are known).
/// Processes that vanish or cannot be read while walking are skipped.
pub fn find_owners(
    inodes: &HashSet<u64>,
    only_pids: Option<&[i32]>,
) -> HashMap<u64, Vec<SocketOwner>> {
    let mut owners: HashMap<u64, Vec<SocketOwner>> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let processes: Box<dyn Iterator<Item = Process>> = match only_pids {
        Some(pids) => Box::new(pids.iter().filter_map(|&pid| Process::new(pid).ok())),
        None => match all_processes() {
            Ok(all) => Box::new(all.filter_map(Result::ok)),
            Err(_) => return owners,
        },
    };
    for process in processes {
        let Ok(fds) = process.fd() else { continue };
        let mut command = None;
        for info in fds.filter_map(Result::ok) {
            let FDTarget::Socket(inode) = info.target else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            let command = command
                .get_or_insert_with(|| {
                    std::fs::read_to_string(format!("/proc/{}/comm", process.pid))
                        .map(|comm| comm.trim_end().to_string())
                        .unwrap_or_default()
                })
                .clone();
            owners.entry(inode).or_default().push(SocketOwner {
                pid: process.pid,
                fd: info.fd,
                command,
            });
        }
    }
    owners
}

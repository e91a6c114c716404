//! Borrowing another process's socket: `pidfd_open` + `pidfd_getfd` (Linux 5.6+).
//!
//! Both the steering (which must put the draining listener in a SOCKHASH) and the
//! graceful close (which shuts down an idle connection so both ends see an orderly FIN)
//! need the very socket the server holds, not a copy of its address. A duplicated
//! descriptor refers to the same open file; closing the duplicate leaves the server's
//! descriptor untouched. Needs ptrace rights over the owner (root, or CAP_SYS_PTRACE).

use std::os::fd::OwnedFd;

use rustix::{
    fs::fstat,
    process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags},
};

/// Why a socket could not be borrowed.
#[derive(Debug, thiserror::Error)]
pub enum PidfdError {
    #[error("pid {0} is not a valid process id")]
    InvalidPid(i32),
    #[error("pidfd_open({pid}): {source}")]
    Open {
        pid: i32,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("pidfd_getfd({pid}, {fd}): {source}")]
    GetFd {
        pid: i32,
        fd: i32,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("fstat of the descriptor taken from pid {pid} fd {fd}: {source}")]
    Stat {
        pid: i32,
        fd: i32,
        #[source]
        source: rustix::io::Errno,
    },
    /// The descriptor number was reused for another file since the owner was looked up.
    #[error("pid {pid} fd {fd} is no longer socket inode {expected_inode}")]
    Replaced {
        pid: i32,
        fd: i32,
        expected_inode: u64,
    },
}

impl PidfdError {
    /// True when the failure is about rights (ptrace policy, capabilities), not about
    /// the socket or the process having gone.
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            Self::Open { source, .. } | Self::GetFd { source, .. }
                if *source == rustix::io::Errno::PERM || *source == rustix::io::Errno::ACCESS
        )
    }
}

/// Duplicates descriptor `fd` of process `pid` into this process, checking that it still
/// refers to socket inode `expected_inode`.
pub fn duplicate_socket(pid: i32, fd: i32, expected_inode: u64) -> Result<OwnedFd, PidfdError> {
    let process = Pid::from_raw(pid).ok_or(PidfdError::InvalidPid(pid))?;
    let pidfd = pidfd_open(process, PidfdFlags::empty())
        .map_err(|source| PidfdError::Open { pid, source })?;
    let socket = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())
        .map_err(|source| PidfdError::GetFd { pid, fd, source })?;
    let stat = fstat(&socket).map_err(|source| PidfdError::Stat { pid, fd, source })?;
    if stat.st_ino != expected_inode {
        return Err(PidfdError::Replaced {
            pid,
            fd,
            expected_inode,
        });
    }
    Ok(socket)
}

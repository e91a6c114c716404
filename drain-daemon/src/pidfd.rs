//! Borrowing another process's socket: `pidfd_open` + `pidfd_getfd` (Linux 5.6+).
//!
//! Both the steering (which must put the draining listener in a SOCKHASH) and the
//! graceful close (which shuts down an idle connection so both ends see an orderly FIN)
//! need the very socket the server holds, not a copy of its address. A duplicated
//! descriptor refers to the same open file; closing the duplicate leaves the server's
//! descriptor untouched. Needs ptrace rights over the owner (root, or CAP_SYS_PTRACE).
//!
//! Between the scan that found "pid P holds the socket on fd N" and the borrow, the
//! server may close fd N and reuse the number for another file or another connection.
//! Shutting down whatever fd N is now would cut a connection the drain never judged, so
//! the borrowed descriptor must prove it is the scanned socket before it is returned: a
//! socket (`S_ISSOCK`), on sockfs (`st_dev`: the inode number alone is only unique
//! within one filesystem), with the scanned inode, and with the scanned socket cookie
//! (`SO_COOKIE`: unique for the kernel's lifetime, so it tells a socket from a later
//! one even if an inode number were reused).

use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use rustix::{
    fs::{fstat, FileType},
    net::{socket, sockopt::socket_cookie, AddressFamily, SocketType},
    process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags},
};

use crate::inventory::sock_diag::{SocketId, TcpSocket};

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
    #[error("getsockopt(SO_COOKIE) of the descriptor taken from pid {pid} fd {fd}: {source}")]
    Cookie {
        pid: i32,
        fd: i32,
        #[source]
        source: rustix::io::Errno,
    },
    /// Finding sockfs's device number needs a socket of our own to `fstat`.
    #[error("socket(AF_UNIX) + fstat, to find the socket filesystem's device: {0}")]
    SockfsDevice(#[source] rustix::io::Errno),
    /// The descriptor number now refers to something other than the scanned socket.
    #[error("pid {pid} fd {fd} is no longer socket inode {expected_inode}: {mismatch}")]
    Replaced {
        pid: i32,
        fd: i32,
        expected_inode: u64,
        mismatch: Mismatch,
    },
}

/// How a borrowed descriptor differs from the socket the scan saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("it is not a socket")]
    NotSocket,
    #[error("it is on device {found:#x}, not on the socket filesystem ({sockfs:#x})")]
    Device { found: u64, sockfs: u64 },
    #[error("it is socket inode {0}")]
    Inode(u64),
    #[error("it has socket cookie {found}, not {expected}")]
    Cookie { found: u64, expected: u64 },
}

/// What graceful closes need, said wherever a lack of ptrace rights is reported.
pub const PTRACE_RIGHTS: &str = "pidfd_getfd needs ptrace rights over the server: \
    CAP_SYS_PTRACE, and kernel.yama.ptrace_scope at most 2 (3 forbids it to everyone), and \
    no LSM policy denying ptrace";

impl PidfdError {
    /// `"; "` and [`PTRACE_RIGHTS`] after a failure about rights, else nothing: the way
    /// out, for an error message.
    pub fn hint(&self) -> String {
        if self.is_permission() {
            format!("; {PTRACE_RIGHTS}")
        } else {
            String::new()
        }
    }

    /// The process the error names, to renumber it for a reader in another PID
    /// namespace.
    pub fn pid_mut(&mut self) -> Option<&mut i32> {
        match self {
            Self::InvalidPid(pid)
            | Self::Open { pid, .. }
            | Self::GetFd { pid, .. }
            | Self::Stat { pid, .. }
            | Self::Cookie { pid, .. }
            | Self::Replaced { pid, .. } => Some(pid),
            Self::SockfsDevice(_) => None,
        }
    }

    /// True when the descriptor is gone rather than refused: its process exited
    /// (`ESRCH`), closed it (`EBADF`), or reused its number for something else.
    pub fn is_gone(&self) -> bool {
        match self {
            Self::Open { source, .. } | Self::GetFd { source, .. } => {
                *source == rustix::io::Errno::SRCH || *source == rustix::io::Errno::BADF
            }
            Self::Replaced { .. } => true,
            _ => false,
        }
    }

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

/// Duplicates descriptor `fd` of process `pid` into this process, checking that it is
/// still `socket`: a socket on sockfs with its inode and, when the scan had one (not from
/// procfs), its cookie. Nothing is done with the descriptor before that check.
pub fn duplicate_socket(pid: i32, fd: i32, socket: &TcpSocket) -> Result<OwnedFd, PidfdError> {
    let process = Pid::from_raw(pid).ok_or(PidfdError::InvalidPid(pid))?;
    let pidfd = pidfd_open(process, PidfdFlags::empty())
        .map_err(|source| PidfdError::Open { pid, source })?;
    let borrowed = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())
        .map_err(|source| PidfdError::GetFd { pid, fd, source })?;
    match mismatch(&borrowed, socket).map_err(|err| err.at(pid, fd))? {
        None => Ok(borrowed),
        Some(mismatch) => Err(PidfdError::Replaced {
            pid,
            fd,
            expected_inode: socket.inode,
            mismatch,
        }),
    }
}

/// A failed identity check, before it is known which process and descriptor it was.
enum CheckError {
    Stat(rustix::io::Errno),
    Cookie(rustix::io::Errno),
    Sockfs(rustix::io::Errno),
}

impl CheckError {
    fn at(self, pid: i32, fd: i32) -> PidfdError {
        match self {
            CheckError::Stat(source) => PidfdError::Stat { pid, fd, source },
            CheckError::Cookie(source) => PidfdError::Cookie { pid, fd, source },
            CheckError::Sockfs(source) => PidfdError::SockfsDevice(source),
        }
    }
}

/// How `file` differs from `socket`, if it does.
fn mismatch(file: &OwnedFd, socket: &TcpSocket) -> Result<Option<Mismatch>, CheckError> {
    let stat = fstat(file).map_err(CheckError::Stat)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Ok(Some(Mismatch::NotSocket));
    }
    let sockfs = sockfs_device().map_err(CheckError::Sockfs)?;
    #[allow(clippy::useless_conversion)] // st_dev is not u64 on every target
    let device = u64::from(stat.st_dev);
    if device != sockfs {
        return Ok(Some(Mismatch::Device {
            found: device,
            sockfs,
        }));
    }
    #[allow(clippy::useless_conversion)]
    let inode = u64::from(stat.st_ino);
    if inode != socket.inode {
        return Ok(Some(Mismatch::Inode(inode)));
    }
    // /proc/net/tcp gives no cookie: the inode on sockfs is then all there is to check.
    if socket.id.cookie == SocketId::NO_COOKIE {
        return Ok(None);
    }
    let cookie = socket_cookie(file).map_err(CheckError::Cookie)?;
    Ok((cookie != socket.id.cookie).then_some(Mismatch::Cookie {
        found: cookie,
        expected: socket.id.cookie,
    }))
}

/// The device number of sockfs, where every socket's inode lives: that of a socket of
/// our own, found once.
fn sockfs_device() -> Result<u64, rustix::io::Errno> {
    static DEVICE: OnceLock<u64> = OnceLock::new();
    if let Some(device) = DEVICE.get() {
        return Ok(*device);
    }
    let probe = socket(AddressFamily::UNIX, SocketType::DGRAM, None)?;
    #[allow(clippy::useless_conversion)]
    let device = u64::from(fstat(&probe)?.st_dev);
    Ok(*DEVICE.get_or_init(|| device))
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        os::fd::{AsFd as _, AsRawFd as _},
    };

    use rustix::net::{shutdown, Shutdown};

    use super::*;
    use crate::inventory::sock_diag::TcpState;

    /// What a scan would have seen of `stream`, one of this process's sockets.
    fn scanned(stream: &TcpStream) -> TcpSocket {
        TcpSocket {
            id: SocketId {
                local: stream.local_addr().unwrap(),
                remote: stream.peer_addr().unwrap(),
                cookie: socket_cookie(stream).unwrap(),
                interface: 0,
            },
            state: TcpState::Established,
            recv_queue: 0,
            send_queue: 0,
            inode: fstat(stream).unwrap().st_ino,
            uid: 0,
            info: None,
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn borrow(fd: i32, socket: &TcpSocket) -> Result<OwnedFd, PidfdError> {
        duplicate_socket(std::process::id() as i32, fd, socket)
    }

    #[test]
    fn the_scanned_socket_is_borrowed() {
        let (server, mut client) = pair();
        let borrowed = borrow(server.as_raw_fd(), &scanned(&server)).unwrap();
        shutdown(borrowed.as_fd(), Shutdown::Write).unwrap();
        assert_eq!(
            client.read(&mut [0; 1]).unwrap(),
            0,
            "the peer reads our FIN"
        );
    }

    /// The fd number was reused by another connection between the scan and the borrow:
    /// same kind of file, same filesystem, but not the scanned socket.
    #[test]
    fn another_socket_on_the_scanned_fd_is_refused_and_left_alone() {
        let (server, _client) = pair();
        let (other_server, mut other_client) = pair();
        let mut seen = scanned(&server);
        let err = borrow(other_server.as_raw_fd(), &seen).unwrap_err();
        assert!(
            matches!(
                err,
                PidfdError::Replaced {
                    mismatch: Mismatch::Inode(_),
                    ..
                }
            ),
            "{err}"
        );
        // The same inode with the wrong cookie: the cookie alone decides.
        seen = scanned(&other_server);
        seen.id.cookie ^= 1;
        let err = borrow(other_server.as_raw_fd(), &seen).unwrap_err();
        assert!(
            matches!(
                err,
                PidfdError::Replaced {
                    mismatch: Mismatch::Cookie { .. },
                    ..
                }
            ),
            "{err}"
        );
        // Nothing was done to the socket that was there.
        (&other_server).write_all(b"x").unwrap();
        let mut byte = [0; 1];
        other_client.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_refused() {
        let file = File::open("/dev/null").unwrap();
        let mut seen = {
            let (server, _client) = pair();
            scanned(&server)
        };
        seen.inode = fstat(&file).unwrap().st_ino;
        let err = borrow(file.as_raw_fd(), &seen).unwrap_err();
        assert!(
            matches!(
                err,
                PidfdError::Replaced {
                    mismatch: Mismatch::NotSocket,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn without_a_cookie_the_inode_on_sockfs_decides() {
        let (server, _client) = pair();
        let mut seen = scanned(&server);
        seen.id.cookie = SocketId::NO_COOKIE;
        assert!(borrow(server.as_raw_fd(), &seen).is_ok());
    }
}

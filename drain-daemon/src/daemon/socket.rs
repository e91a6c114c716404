//! Creating a control socket without ever following a path: nobody who can write the
//! socket's directory (a pod running as uid 0 with it mounted read-write, say) can turn
//! the daemon's socket setup into a change of another file.
//!
//! Binding a socket and then `chmod`-ing its path follows whatever stands at the path
//! by then: a symlink swapped in between gives the mode to the link's target. So the
//! socket gets its mode from `bind` itself, under a private, unpredictable name, on a
//! thread whose umask is the socket's mode (`unshare(CLONE_FS)` gives the thread a umask
//! of its own, so the daemon's other threads keep theirs), and is then renamed over the
//! path; `bind` never follows a final symlink (it fails with EADDRINUSE), and `rename`
//! replaces a name without following it. The directory is opened and checked with
//! [`SafeDir`] (root's, not writable by others unless sticky, no symlink on the way),
//! and everything after works on its descriptor.

use std::{
    io,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
};

use rustix::fs::{statat, AtFlags, FileType};

use crate::safe_dir::{DirError, SafeDir};

/// Why a control socket was not created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: a socket path needs a file name in a directory (choose another --socket)")]
    NoFileName { path: PathBuf },
    #[error("the directory of {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: DirError,
    },
    #[error("another drain-daemon serves {path}")]
    InUse { path: PathBuf },
    #[error("{path} is {kind}, not a socket: refusing to replace it (choose another --socket)")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("{call} {path}: {source}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    /// The kind of I/O error the daemon exits with (its callers speak `io::Error`).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            SocketError::InUse { .. } => io::ErrorKind::AddrInUse,
            SocketError::NotASocket { .. } => io::ErrorKind::AlreadyExists,
            SocketError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<SocketError> for io::Error {
    fn from(err: SocketError) -> io::Error {
        io::Error::new(err.kind(), err.to_string())
    }
}

/// A control socket the daemon created: where it is, to remove it again.
pub struct OwnSocket {
    dir: SafeDir,
    name: String,
    inode: u64,
}

impl OwnSocket {
    /// Creates the socket at `path` with `mode` (its directory, when missing, with
    /// `dir_mode`), replacing a stale socket there but never a live daemon's, and never
    /// anything that is not a socket: the path is an argument, and root must not delete
    /// the file a mistyped `--socket` names.
    pub fn bind(
        path: &Path,
        mode: u32,
        dir_mode: u32,
    ) -> Result<(UnixListener, OwnSocket), SocketError> {
        let path = std::path::absolute(path).map_err(|source| SocketError::Io {
            call: "getcwd",
            path: path.to_path_buf(),
            source,
        })?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(SocketError::NoFileName { path });
        };
        let dir =
            SafeDir::open_system_creating(parent, dir_mode).map_err(|source| SocketError::Dir {
                path: path.clone(),
                source,
            })?;
        check_replaceable(&dir, name, &path)?;
        let temporary = format!(".{name}.{:016x}", fastrand::u64(..));
        let listener =
            bind_with_mode(&dir.fd_path(&temporary), mode).map_err(|source| SocketError::Io {
                call: "bind",
                path: parent.join(&temporary),
                source,
            })?;
        let renamed = dir.rename(&temporary, name).and_then(|()| {
            statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|errno| DirError::Io {
                call: "statat",
                path: path.clone(),
                source: errno.into(),
            })
        });
        match renamed {
            Ok(stat) => Ok((
                listener,
                OwnSocket {
                    dir,
                    name: name.to_string(),
                    inode: stat.st_ino,
                },
            )),
            Err(source) => {
                let _ = dir.unlink(&temporary);
                Err(SocketError::Dir { path, source })
            }
        }
    }

    /// Removes the socket if its name still holds it (not a file put there since).
    pub fn remove(&self) {
        let ours = statat(&self.dir, self.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| stat.st_ino == self.inode);
        if ours {
            let _ = self.dir.unlink(&self.name);
        }
    }
}

/// Whether `name` may be replaced: nothing there, or a socket nobody serves.
fn check_replaceable(dir: &SafeDir, name: &str, path: &Path) -> Result<(), SocketError> {
    let found = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(found) => FileType::from_raw_mode(found.st_mode),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(errno) => {
            return Err(SocketError::Io {
                call: "lstat",
                path: path.to_path_buf(),
                source: errno.into(),
            })
        }
    };
    let kind = match found {
        FileType::Socket if served(&dir.fd_path(name)) => {
            return Err(SocketError::InUse {
                path: path.to_path_buf(),
            })
        }
        FileType::Socket => return Ok(()),
        FileType::Symlink => "a symbolic link",
        FileType::Directory => "a directory",
        FileType::RegularFile => "a regular file",
        _ => "a special file",
    };
    Err(SocketError::NotASocket {
        path: path.to_path_buf(),
        kind,
    })
}

/// Whether a process listens on the socket at `path`. Without waiting: a daemon whose
/// backlog is full is as alive as one that accepts.
fn served(path: &Path) -> bool {
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    let Ok(address) = SocketAddrUnix::new(path) else {
        return false;
    };
    let Ok(probe) = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    ) else {
        return false;
    };
    !matches!(
        connect(&probe, &address),
        Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT)
    )
}

/// Binds a listening socket at `path` (a name in a directory held open, through
/// `/proc/self/fd`) whose file gets exactly `mode`: `bind` gives a socket file the
/// permissions the umask leaves, so it runs on a thread with a umask of its own.
fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let path = path.to_path_buf();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(!mode & 0o777));
                UnixListener::bind(&path)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the binding thread panicked")))
    })
}

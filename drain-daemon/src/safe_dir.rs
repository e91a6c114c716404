//! Directories root can trust, opened and used without following symbolic links.
//!
//! drainctl and drain-daemon run as root and create, rename and delete under
//! `/sys/fs/bpf/drain-daemon` and `/run/drain-daemon`. Resolving those paths by name
//! would let anyone who can create an entry along the way (a symlink, a directory of
//! their own) redirect root's writes and deletions to files of their choice. So each
//! level is opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`
//! and checked (a directory, owned by root, writable by nobody else) before anything
//! inside it is used, and from then on everything works on descriptors (`openat`,
//! `unlinkat`, `renameat`, `flock`), never on the path again.
//!
//! Directories this program owns must be writable by root only. The system directories
//! above them (`/`, `/run`, a bpffs mount point) may also be world-writable with the
//! sticky bit, as `/tmp` is (and a bpffs mounted without `mode=` is): there nobody
//! but root can rename or remove root's entries.

use std::{
    ffi::CStr,
    io::Write as _,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

use rustix::{
    fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, Stat},
    io::Errno,
};

/// Why a directory (or a file in it) was not used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path} is a symbolic link or not a directory; refusing to use it (remove it, it is recreated)")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {uid}, not root; refusing to use it (remove it, it is recreated)"
    )]
    NotRootOwned { path: PathBuf, uid: u32 },
    #[error("{path} is writable by other users (mode {mode:o}); refusing to use it (remove it, it is recreated)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file; refusing to read it")]
    NotAFile { path: PathBuf },
    #[error("{call} {path}: {source}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DirError {
    /// The directory or file does not exist (nothing to use, not an attack).
    pub fn is_not_found(&self) -> bool {
        matches!(self, DirError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// Someone else's entry stands where ours should be: a refusal, not a system error.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            DirError::NotADirectory { .. }
                | DirError::NotRootOwned { .. }
                | DirError::Writable { .. }
                | DirError::NotAFile { .. }
        )
    }

    fn io(call: &'static str, path: &Path, errno: Errno) -> Self {
        DirError::Io {
            call,
            path: path.to_path_buf(),
            source: errno.into(),
        }
    }
}

/// How much a directory is trusted to be left alone by others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A system directory above ours: root's, sticky if others may write in it.
    System,
    /// One of ours: root's, and writable by root only.
    Us,
}

/// An open directory that passed the checks, with the path it was reached by (for
/// messages and for APIs that take paths, see [`SafeDir::fd_path`]).
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl SafeDir {
    /// Opens an absolute path of existing system directories from `/`, one level at a
    /// time, none of them a symlink, each root's and not writable by others unless sticky.
    pub fn open_system(path: &Path) -> Result<SafeDir, DirError> {
        SafeDir::walk_system(path, None)
    }

    /// [`SafeDir::open_system`], creating the levels that are missing with `mode` (root's,
    /// whatever the process umask): a directory for a socket that others reach (0755), or
    /// root's alone (0700).
    pub fn open_system_creating(path: &Path, mode: u32) -> Result<SafeDir, DirError> {
        SafeDir::walk_system(path, Some(Mode::from_raw_mode(mode)))
    }

    fn walk_system(path: &Path, create: Option<Mode>) -> Result<SafeDir, DirError> {
        let mut dir = SafeDir::open_at(rfs::CWD, Path::new("/"), "/", Owner::System)?;
        for component in path.components() {
            match component {
                Component::RootDir => {}
                Component::Normal(name) => {
                    let name = name.to_str().ok_or_else(|| DirError::NotADirectory {
                        path: path.to_path_buf(),
                    })?;
                    let created = match create.map(|mode| rfs::mkdirat(&dir.fd, name, mode)) {
                        Some(Ok(())) => create,
                        None | Some(Err(Errno::EXIST)) => None,
                        Some(Err(errno)) => {
                            return Err(DirError::io("mkdirat", &dir.path.join(name), errno))
                        }
                    };
                    dir = dir.open_child(name, Owner::System)?;
                    // mkdirat's mode went through the umask; the descriptor is the one
                    // checked, so the mode is set there, not by path.
                    if let Some(mode) = created {
                        rfs::fchmod(&dir.fd, mode)
                            .map_err(|errno| DirError::io("fchmod", &dir.path, errno))?;
                    }
                }
                _ => {
                    return Err(DirError::NotADirectory {
                        path: path.to_path_buf(),
                    })
                }
            }
        }
        Ok(dir)
    }

    /// Like [`SafeDir::open_system`], in the mount tree of init (pid 1) as reached
    /// through `/proc/1/root`, whatever mount namespace this process is in.
    pub fn open_system_of_init(path: &Path) -> Result<SafeDir, DirError> {
        const INIT_ROOT: &str = "/proc/1/root";
        // The one link followed: the kernel's own, to init's root directory.
        let fd = rfs::openat(
            rfs::CWD,
            INIT_ROOT,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| DirError::io("openat", Path::new(INIT_ROOT), errno))?;
        let mut dir = SafeDir {
            fd,
            path: PathBuf::from(INIT_ROOT),
        };
        dir.check(Owner::System)?;
        for name in path.components().filter_map(|c| match c {
            Component::Normal(name) => name.to_str(),
            _ => None,
        }) {
            dir = dir.open_child(name, Owner::System)?;
        }
        Ok(dir)
    }

    /// Opens our directory `name` in this one, creating it (mode 0700) when `create`.
    pub fn child(&self, name: &str, create: bool) -> Result<SafeDir, DirError> {
        if create {
            match rfs::mkdirat(&self.fd, name, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(errno) => return Err(DirError::io("mkdirat", &self.path.join(name), errno)),
            }
        }
        self.open_child(name, Owner::Us)
    }

    fn open_child(&self, name: &str, owner: Owner) -> Result<SafeDir, DirError> {
        SafeDir::open_at(self.fd.as_fd(), &self.path.join(name), name, owner)
    }

    fn open_at(
        parent: BorrowedFd<'_>,
        path: &Path,
        name: &str,
        owner: Owner,
    ) -> Result<SafeDir, DirError> {
        let fd = match rfs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            // What O_NOFOLLOW and O_DIRECTORY answer for a symlink or another file.
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(DirError::NotADirectory {
                    path: path.to_path_buf(),
                })
            }
            Err(errno) => return Err(DirError::io("openat", path, errno)),
        };
        let dir = SafeDir {
            fd,
            path: path.to_path_buf(),
        };
        dir.check(owner)?;
        Ok(dir)
    }

    fn check(&self, owner: Owner) -> Result<(), DirError> {
        let stat = self.stat()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return Err(DirError::NotADirectory {
                path: self.path.clone(),
            });
        }
        if stat.st_uid != 0 {
            return Err(DirError::NotRootOwned {
                path: self.path.clone(),
                uid: stat.st_uid,
            });
        }
        let mode = stat.st_mode & 0o7777;
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if others_write && !(owner == Owner::System && sticky) {
            return Err(DirError::Writable {
                path: self.path.clone(),
                mode,
            });
        }
        Ok(())
    }

    /// The path this directory was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stat(&self) -> Result<Stat, DirError> {
        rfs::fstat(&self.fd).map_err(|errno| DirError::io("fstat", &self.path, errno))
    }

    /// A path that reaches `name` in this very directory through `/proc/self/fd`,
    /// for interfaces that take only paths (BPF_OBJ_PIN, BPF_OBJ_GET): the kernel
    /// resolves it to the directory held open here, whatever was renamed since.
    pub fn fd_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// Takes an exclusive `flock` on this directory without waiting. Ok(false): another
    /// open description holds it (another process, or another drain in this one).
    /// Dropping the [`SafeDir`] releases it.
    pub fn try_lock(&self) -> Result<bool, DirError> {
        match rfs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(errno) => Err(DirError::io("flock", &self.path, errno)),
        }
    }

    /// Takes a shared `flock` on this directory, waiting for an exclusive holder to
    /// let go: for holds that are only ever brief.
    pub fn lock_shared(&self) -> Result<(), DirError> {
        rfs::flock(&self.fd, FlockOperation::LockShared)
            .map_err(|errno| DirError::io("flock", &self.path, errno))
    }

    /// Gives up this description's `flock`, shared or exclusive, before the [`SafeDir`]
    /// is dropped.
    pub fn unlock(&self) -> Result<(), DirError> {
        rfs::flock(&self.fd, FlockOperation::Unlock)
            .map_err(|errno| DirError::io("flock", &self.path, errno))
    }

    /// Whether `child` is still linked in this directory as `name` (not removed or
    /// replaced since it was opened).
    pub fn still_holds(&self, name: &str, child: &SafeDir) -> bool {
        let (Ok(linked), Ok(open)) = (
            rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW),
            rfs::fstat(&child.fd),
        ) else {
            return false;
        };
        linked.st_ino == open.st_ino && linked.st_dev == open.st_dev && open.st_nlink > 0
    }

    /// The names in this directory (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<String>, DirError> {
        let dir = rfs::Dir::read_from(&self.fd)
            .map_err(|errno| DirError::io("openat .", &self.path, errno))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|errno| DirError::io("getdents", &self.path, errno))?;
            let name: &CStr = entry.file_name();
            match name.to_str() {
                Ok("." | "..") => {}
                Ok(name) => names.push(name.to_string()),
                // Not a name this program ever makes.
                Err(_) => {}
            }
        }
        Ok(names)
    }

    /// Removes the entry `name` (never following it, whatever it is but a directory).
    /// Ok(false) when it was not there.
    pub fn unlink(&self, name: &str) -> Result<bool, DirError> {
        self.unlink_with(name, AtFlags::empty(), "unlinkat")
    }

    /// Removes the empty directory `name`. Ok(false) when it was not there.
    pub fn remove_dir(&self, name: &str) -> Result<bool, DirError> {
        self.unlink_with(name, AtFlags::REMOVEDIR, "unlinkat(AT_REMOVEDIR)")
    }

    fn unlink_with(
        &self,
        name: &str,
        flags: AtFlags,
        call: &'static str,
    ) -> Result<bool, DirError> {
        match rfs::unlinkat(&self.fd, name, flags) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(errno) => Err(DirError::io(call, &self.path.join(name), errno)),
        }
    }

    /// Renames `from` to `to` within this directory, replacing `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), DirError> {
        rfs::renameat(&self.fd, from, &self.fd, to)
            .map_err(|errno| DirError::io("renameat", &self.path.join(to), errno))
    }

    /// Replaces the file `name` with `contents` at once: written to a new file of an
    /// unpredictable name (`O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600), then renamed.
    pub fn write_atomically(&self, name: &str, contents: &[u8]) -> Result<(), DirError> {
        let temporary = format!(".{name}.{:016x}", fastrand::u64(..));
        let flags = OFlags::WRONLY
            .union(OFlags::CREATE)
            .union(OFlags::EXCL)
            .union(OFlags::NOFOLLOW)
            .union(OFlags::CLOEXEC);
        let fd = rfs::openat(&self.fd, temporary.as_str(), flags, Mode::RUSR | Mode::WUSR)
            .map_err(|errno| {
                DirError::io("openat(O_CREAT|O_EXCL)", &self.path.join(&temporary), errno)
            })?;
        let written = std::fs::File::from(fd)
            .write_all(contents)
            .map_err(|source| DirError::Io {
                call: "write",
                path: self.path.join(&temporary),
                source,
            });
        let renamed = written.and_then(|()| self.rename(&temporary, name));
        if renamed.is_err() {
            let _ = self.unlink(&temporary);
        }
        renamed
    }

    /// Reads the regular file `name` (never through a symlink, never blocking on a FIFO).
    pub fn read(&self, name: &str) -> Result<Vec<u8>, DirError> {
        let path = self.path.join(name);
        let flags = OFlags::RDONLY
            .union(OFlags::NOFOLLOW)
            .union(OFlags::NONBLOCK)
            .union(OFlags::CLOEXEC);
        let fd = match rfs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(DirError::NotAFile { path }),
            Err(errno) => return Err(DirError::io("openat", &path, errno)),
        };
        let stat = rfs::fstat(&fd).map_err(|errno| DirError::io("fstat", &path, errno))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(DirError::NotAFile { path });
        }
        let mut contents = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut contents).map_err(
            |source| DirError::Io {
                call: "read",
                path,
                source,
            },
        )?;
        Ok(contents)
    }
}

impl AsFd for SafeDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt as _};

    use super::*;

    /// A scratch directory root owns and nobody else can write (tests run as root).
    fn scratch(name: &str) -> Option<PathBuf> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("safe-dir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(dir)
    }

    #[test]
    fn symlinks_and_foreign_directories_are_refused() {
        let Some(base) = scratch("refused") else {
            return;
        };
        let victim = base.join("victim");
        std::fs::create_dir(&victim).unwrap();
        symlink(&victim, base.join("link")).unwrap();
        std::fs::create_dir(base.join("theirs")).unwrap();
        std::os::unix::fs::chown(base.join("theirs"), Some(65534), None).unwrap();
        std::fs::create_dir(base.join("open")).unwrap();
        std::fs::set_permissions(base.join("open"), std::fs::Permissions::from_mode(0o777))
            .unwrap();

        let dir = SafeDir::open_system(&base).unwrap();
        let err = dir.child("link", true).unwrap_err();
        assert!(matches!(err, DirError::NotADirectory { .. }), "{err}");
        let err = dir.child("theirs", true).unwrap_err();
        assert!(
            matches!(err, DirError::NotRootOwned { uid: 65534, .. }),
            "{err}"
        );
        let err = dir.child("open", true).unwrap_err();
        assert!(
            matches!(err, DirError::Writable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.is_untrusted());
        // A symlink along a system path is refused too.
        let err = SafeDir::open_system(&base.join("link")).unwrap_err();
        assert!(matches!(err, DirError::NotADirectory { .. }), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn files_are_replaced_atomically_and_never_read_through_symlinks() {
        let Some(base) = scratch("files") else { return };
        let dir = SafeDir::open_system(&base)
            .unwrap()
            .child("ours", true)
            .unwrap();
        let mode = dir.stat().unwrap().st_mode & 0o7777;
        assert_eq!(mode, 0o700);
        dir.write_atomically("record.json", b"one").unwrap();
        dir.write_atomically("record.json", b"two").unwrap();
        assert_eq!(dir.read("record.json").unwrap(), b"two");
        assert_eq!(dir.names().unwrap(), vec!["record.json".to_string()]);

        std::fs::write(base.join("secret"), b"secret").unwrap();
        symlink(base.join("secret"), base.join("ours/evil")).unwrap();
        let err = dir.read("evil").unwrap_err();
        assert!(matches!(err, DirError::NotAFile { .. }), "{err}");
        assert!(dir.unlink("evil").unwrap());
        assert_eq!(std::fs::read(base.join("secret")).unwrap(), b"secret");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_lock_excludes_other_open_descriptions_in_the_same_process() {
        let Some(base) = scratch("lock") else { return };
        let root = SafeDir::open_system(&base).unwrap();
        let first = root.child("port", true).unwrap();
        let second = root.child("port", false).unwrap();
        assert!(first.try_lock().unwrap());
        assert!(!second.try_lock().unwrap());
        assert!(root.still_holds("port", &second));
        drop(first);
        assert!(second.try_lock().unwrap());
        root.remove_dir("port").unwrap();
        assert!(!root.still_holds("port", &second));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

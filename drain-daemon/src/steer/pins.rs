//! The pin tree, where a drain's steering outlives the process that set it up:
//! `/sys/fs/bpf/drain-daemon/netns-<inode>-<cookie>/port-<port>/{link,listeners,successors,counts,v6only,expiry}`.
//! A namespace is named by its [`Identity`], cookie included, so a namespace that gets a
//! deleted one's inode never takes that one's leftover pins for its own.
//!
//! It runs as root in a directory tree other users could reach, so:
//! - bpffs is mounted `mode=0700,nosuid,nodev,noexec` when this program mounts it, and
//!   every level of the tree is opened through [`SafeDir`] (no symlink followed, root's,
//!   writable by root only); an untrusted level is refused, never repaired.
//! - Whoever changes a port's pins (a drain for its whole run, a release, a sweep
//!   removing stale pins) holds an exclusive `flock` on the port's directory. bpffs holds
//!   no regular files, so the directory itself is the lock file. Holding it is what makes
//!   the pins in it ours: nobody else pins, reuses or removes them meanwhile, and a
//!   second drain of the port is told who holds it ([`PinError::Busy`]).
//! - A sweep's hold on a port must not pass for a drain's: a drain starting while a
//!   sweep looks at its port would be refused as busy. So a sweep holds its namespace's
//!   directory exclusively while it holds any of that namespace's ports (and skips a
//!   namespace it cannot have at once), and a drain, a release, takes its port's lock
//!   under a shared hold of the namespace's directory, given up once the port is
//!   locked: a port found locked then is held by a drain or a release, never a sweep.
//! - Pins are made under a staging name and renamed into place, the link last, so a
//!   `link` pin is only ever seen with its maps beside it and the listeners already in
//!   them. Removal unlinks only the names listed here; anything else is left alone.

use std::{fs, io, path::Path};

use aya::{
    maps::{Array, Map, MapData, MapError, SockHash},
    programs::links::{FdLink, LinkError, PinnedLink},
};
use tracing::{debug, info, warn};

use super::expiry::Expiry;
use crate::{
    netns::{self, Identity},
    safe_dir::{DirError, SafeDir},
};

pub const BPFFS: &str = "/sys/fs/bpf";
const ROOT_NAME: &str = "drain-daemon";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pinned link: while it is pinned, the program stays attached.
pub const LINK: &str = "link";
pub const LISTENERS: &str = "listeners";
pub const SUCCESSORS: &str = "successors";
pub const COUNTS: &str = "counts";
pub const V6ONLY: &str = "v6only";
pub const EXPIRY: &str = "expiry";
/// Every name a port directory may hold, the link first: unpinning it detaches the
/// program at once, before its maps go.
const PINS: [&str; 6] = [LINK, LISTENERS, SUCCESSORS, COUNTS, V6ONLY, EXPIRY];
/// Appended to a pin's name while it is being pinned (bpffs refuses names with a dot).
const STAGING: &str = "-staging";

/// How often taking a port's lock starts over because a sweep removed the directory
/// just opened; a sweep removes it at most once, so more means something is wrong.
const LOCK_ATTEMPTS: usize = 8;

/// Why the pin tree could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("port {port} is already being drained by {}", holder_name(*.holder))]
    Busy { port: u16, holder: Option<u32> },
    #[error("mounting bpffs at {BPFFS} (mount): {0}")]
    Mount(#[source] io::Error),
    #[error("{BPFFS} is not a bpffs mount (fstatfs)")]
    NotBpffs,
    #[error("this process runs in a mount namespace of its own (`ip netns exec` makes one, with a /sys of its own) where a bpffs would end with it, and the host's {BPFFS} is not a bpffs it can reach through /proc/1/root: enter only the network namespace (nsenter --net=/run/netns/NAME) or mount bpffs on the host (mount -t bpf -o mode=0700 bpf {BPFFS})")]
    PrivateMountNamespace,
    #[error("pin directory: {0}")]
    Dir(#[from] DirError),
    #[error("the pin directory of port {port} was removed {LOCK_ATTEMPTS} times while it was being locked")]
    Contended { port: u16 },
}

impl PinError {
    /// Whether the machine is at fault (exit code 3): someone else's entry in the tree,
    /// or another drain of the port.
    pub fn is_environment(&self) -> bool {
        match self {
            PinError::Busy { .. } => true,
            PinError::Dir(err) => err.is_untrusted(),
            _ => false,
        }
    }

    /// bpffs cannot be had at all: the refusal can still be held by the process.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PinError::Mount(_) | PinError::NotBpffs | PinError::PrivateMountNamespace
        )
    }
}

fn holder_name(holder: Option<u32>) -> String {
    holder.map_or_else(|| "another process".into(), |pid| format!("pid {pid}"))
}

/// `/sys/fs/bpf/drain-daemon`, opened and checked.
pub struct PinRoot {
    dir: SafeDir,
}

impl PinRoot {
    /// Opens the pin root, mounting bpffs and creating the directory (0700) if needed.
    pub fn open_or_create() -> Result<PinRoot, PinError> {
        let bpffs = ensure_bpffs()?;
        Self::open(bpffs, true)
    }

    /// Opens the pin root if it exists.
    pub fn open_existing() -> Result<Option<PinRoot>, PinError> {
        let bpffs =
            if rustix::fs::statfs(BPFFS).is_ok_and(is_bpffs) || !in_private_mount_namespace() {
                Bpffs::Own
            } else {
                Bpffs::Init
            };
        match Self::open(bpffs, false) {
            Ok(root) => Ok(Some(root)),
            // Init's tree is out of reach (another user namespace): nothing pinned there
            // can be seen from here.
            Err(PinError::Dir(err)) if bpffs == Bpffs::Init && !err.is_untrusted() => Ok(None),
            Err(PinError::Dir(err)) if err.is_not_found() => Ok(None),
            Err(PinError::NotBpffs) => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn open(bpffs: Bpffs, create: bool) -> Result<PinRoot, PinError> {
        let bpffs = match bpffs {
            Bpffs::Own => SafeDir::open_system(Path::new(BPFFS))?,
            Bpffs::Init => SafeDir::open_system_of_init(Path::new(BPFFS))?,
        };
        if !rustix::fs::fstatfs(&bpffs).is_ok_and(is_bpffs) {
            return Err(PinError::NotBpffs);
        }
        Ok(PinRoot {
            dir: bpffs.child(ROOT_NAME, create)?,
        })
    }

    /// Locks the directory of `port` in the namespace `netns`, creating it (and the
    /// namespace's) when `create`. Ok(None): it does not exist and `create` is false.
    pub fn lock_port(
        &self,
        netns: &Identity,
        port: u16,
        create: bool,
    ) -> Result<Option<PortDir>, PinError> {
        let netns_name = netns.dir_name();
        let port_name = format!("port-{port}");
        for _ in 0..LOCK_ATTEMPTS {
            let opened = self
                .dir
                .child(&netns_name, create)
                .and_then(|netns| Ok((netns.child(&port_name, create)?, netns)));
            let (dir, netns) = match opened {
                Ok(opened) => opened,
                // Without create: nothing there. With create: a sweep removed the
                // namespace's directory between its creation and ours (mkdirat in a
                // removed directory is ENOENT); start over.
                Err(err) if err.is_not_found() && !create => return Ok(None),
                Err(err) if err.is_not_found() => continue,
                Err(err) => return Err(err.into()),
            };
            // Waits out a sweep of the namespace (it holds no port for long), so that a
            // lock found held below is a drain's or a release's.
            netns.lock_shared()?;
            let locked = dir.try_lock();
            netns.unlock()?;
            if !locked? {
                return Err(PinError::Busy {
                    port,
                    holder: lock_holder(&dir),
                });
            }
            // A sweep may have removed the directory after we opened it and before we
            // locked it; then the lock is on a directory nobody else will ever see.
            if self.dir.still_holds(&netns_name, &netns) && netns.still_holds(&port_name, &dir) {
                return Ok(Some(PortDir { netns, dir, port }));
            }
        }
        Err(PinError::Contended { port })
    }

    /// Opens the directory of `port` in `netns` to read it, without the lock.
    pub fn find_port(&self, netns: &Identity, port: u16) -> Result<SafeDir, DirError> {
        self.dir
            .child(&netns.dir_name(), false)?
            .child(&format!("port-{port}"), false)
    }

    /// Removes every pinned drain, in any network namespace, whose listeners are all
    /// closed (their programs no longer refuse anything), skipping ports locked by a
    /// running drain and leaving alone every entry this program does not make.
    pub fn sweep_stale(&self) {
        let namespaces = match self.dir.names() {
            Ok(names) => names,
            Err(err) => return warn!("cannot sweep stale pinned drains: {err}"),
        };
        for netns_name in namespaces {
            // Directories of namespaces that are gone go too: their sockets, the
            // draining listeners among them, went with the namespace.
            if Identity::from_dir_name(&netns_name).is_none() {
                debug!(
                    name = netns_name,
                    "leaving alone an entry drain-daemon did not make"
                );
                continue;
            }
            let netns = match self.dir.child(&netns_name, false) {
                Ok(netns) => netns,
                Err(err) => {
                    warn!("not sweeping: {err}");
                    continue;
                }
            };
            // Held until this namespace is done (dropping `netns` gives it up): a drain
            // locking one of its ports meanwhile waits rather than find a sweep's hold.
            // Held by a drain taking its lock now: swept next time.
            match netns.try_lock() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    warn!("not sweeping: {err}");
                    continue;
                }
            }
            for port_name in netns.names().unwrap_or_default() {
                let Some(port) = port_of(&port_name) else {
                    debug!(
                        name = port_name,
                        "leaving alone an entry drain-daemon did not make"
                    );
                    continue;
                };
                // The port's own handle of its parent: removing it needs one.
                let Ok(parent) = self.dir.child(&netns_name, false) else {
                    break;
                };
                let dir = match parent.child(&port_name, false) {
                    Ok(dir) => dir,
                    Err(err) => {
                        warn!("not sweeping: {err}");
                        continue;
                    }
                };
                match dir.try_lock() {
                    Ok(true) if parent.still_holds(&port_name, &dir) => {}
                    // Held by a running drain, or already removed by another sweep.
                    Ok(_) => continue,
                    Err(err) => {
                        warn!("not sweeping: {err}");
                        continue;
                    }
                }
                let locked = PortDir {
                    netns: parent,
                    dir,
                    port,
                };
                if !locked.still_refusing() {
                    debug!(dir = %locked.path().display(), "removing a stale pinned drain");
                    if let Err(err) = locked.remove() {
                        warn!("cannot remove a stale pinned drain: {err}");
                    }
                }
            }
            // Fails while other ports of that namespace remain: that is intended.
            let _ = self.dir.remove_dir(&netns_name);
        }
    }
}

/// The locked directory of one port's pins. Dropping it releases the lock.
pub struct PortDir {
    netns: SafeDir,
    dir: SafeDir,
    port: u16,
}

impl PortDir {
    /// Where the pins are, for messages and reports.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether a complete drain is pinned here (the link is pinned last).
    pub fn has_link(&self) -> bool {
        self.dir
            .names()
            .is_ok_and(|names| names.iter().any(|n| n == LINK))
    }

    /// Whether the pinned program still refuses something: a draining listener is
    /// open and its [`Expiry`] has not passed.
    pub fn still_refusing(&self) -> bool {
        still_refusing(&self.dir)
    }

    pub fn open_map(&self, name: &str) -> Result<MapData, MapError> {
        MapData::from_pin(self.dir.fd_path(name))
    }

    pub fn open_link(&self) -> Result<PinnedLink, LinkError> {
        PinnedLink::from_pin(self.dir.fd_path(LINK))
    }

    /// Pins `map` as `name`: under a staging name first, then renamed into place.
    pub fn pin_map(&self, name: &str, map: &Map) -> Result<(), String> {
        self.pin_as(name, |path| map.pin(path).map_err(|err| err.to_string()))
    }

    /// Pins the link, which keeps the program attached after this process. aya consumes
    /// the link even when pinning fails, so a failure is final.
    pub fn pin_link(&self, link: FdLink) -> Result<(), String> {
        self.pin_as(LINK, |path| {
            link.pin(path).map(drop).map_err(|err| err.to_string())
        })
    }

    fn pin_as(
        &self,
        name: &str,
        pin: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<(), String> {
        let staging = format!("{name}{STAGING}");
        // Left over by a drain killed while pinning (we hold the lock now).
        self.dir.unlink(&staging).map_err(|err| err.to_string())?;
        pin(&self.dir.fd_path(&staging)).map_err(|err| format!("{name}: {err}"))?;
        self.dir
            .rename(&staging, name)
            .map_err(|err| err.to_string())
    }

    /// Unpins everything this program pins here, the link first.
    pub fn unpin(&self) -> Result<(), DirError> {
        for name in PINS {
            self.dir.unlink(name)?;
            self.dir.unlink(&format!("{name}{STAGING}"))?;
        }
        Ok(())
    }

    /// Unpins, then removes the directory and, if it was the last, its namespace's.
    /// The lock is held until the directory is gone.
    pub fn remove(self) -> Result<(), DirError> {
        self.unpin()?;
        let name = format!("port-{}", self.port);
        match self.netns.remove_dir(&name) {
            Ok(_) => {}
            // Something we did not make is in there: leave it, and the directory.
            Err(DirError::Io { ref source, .. })
                if source.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                info!(dir = %self.path().display(), "left a pin directory with entries drain-daemon did not make");
            }
            Err(err) => return Err(err),
        }
        Ok(())
    }
}

/// Whether the pinned drain in `dir` still refuses something: a draining listener is
/// open, and its [`Expiry`] has not passed (a drain pinned without one has none).
pub fn still_refusing(dir: &SafeDir) -> bool {
    let listening = MapData::from_pin(dir.fd_path(LISTENERS))
        .and_then(|data| SockHash::<_, u32>::try_from(Map::SockHash(data)))
        .is_ok_and(|map| map.keys().any(|key| key.is_ok()));
    let expired = MapData::from_pin(dir.fd_path(EXPIRY))
        .and_then(|data| Array::<_, u64>::try_from(Map::Array(data)))
        .ok()
        .and_then(|map| Expiry::read(&map))
        .is_some_and(Expiry::passed);
    listening && !expired
}

/// The process holding the flock on `dir`, from `/proc/locks` (best effort: flock
/// itself does not tell).
fn lock_holder(dir: &SafeDir) -> Option<u32> {
    let stat = dir.stat().ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    flock_holder(
        &locks,
        rustix::fs::major(stat.st_dev),
        rustix::fs::minor(stat.st_dev),
        stat.st_ino,
    )
}

/// Finds the holder of a FLOCK on the inode in `/proc/locks` text, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF` (waiters have `->` after the number).
fn flock_holder(locks: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    let id = format!("{major:02x}:{minor:02x}:{inode}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == id => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The port a directory named `port-<port>` is for (canonical spelling only).
fn port_of(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("port-")?;
    netns::parse_canonical(digits).and_then(|port| u16::try_from(port).ok())
}

fn is_bpffs(fs: rustix::fs::StatFs) -> bool {
    fs.f_type == BPF_FS_MAGIC
}

/// Which bpffs holds the pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bpffs {
    /// The one at /sys/fs/bpf as this process sees it.
    Own,
    /// Init's, through /proc/1/root: this process is in a mount namespace of its own
    /// with no bpffs, where a mount would end with the process.
    Init,
}

/// Finds a bpffs at /sys/fs/bpf that outlives this process, mounting one (root only,
/// like systemd does: `mode=0700`, no setuid, devices or executables) if there is none.
///
/// `ip netns exec` runs a command in a new mount namespace with a /sys of its own: a
/// bpffs mounted there, and every pin in it, would end with the command, and the refusal
/// with them. There the host's bpffs is used through /proc/1/root, and none is mounted.
fn ensure_bpffs() -> Result<Bpffs, PinError> {
    if rustix::fs::statfs(BPFFS).is_ok_and(is_bpffs) {
        return Ok(Bpffs::Own);
    }
    if in_private_mount_namespace() {
        let init_bpffs = SafeDir::open_system_of_init(Path::new(BPFFS))
            .is_ok_and(|dir| rustix::fs::fstatfs(&dir).is_ok_and(is_bpffs));
        return if init_bpffs {
            Ok(Bpffs::Init)
        } else {
            Err(PinError::PrivateMountNamespace)
        };
    }
    fs::create_dir_all(BPFFS).map_err(PinError::Mount)?;
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|errno| PinError::Mount(errno.into()))?;
    info!("mounted bpffs at {BPFFS} (mode 0700)");
    Ok(Bpffs::Own)
}

/// Whether this process is alone in its mount namespace, as in the one `ip netns exec`
/// or `unshare --mount` makes for a command: that namespace, and whatever is mounted in
/// it, ends with this process. A process whose namespace root cannot read is in an
/// ancestor user namespace (the machine's init in a container), not in one made here.
fn in_private_mount_namespace() -> bool {
    let ns = |pid: &str| {
        rustix::fs::stat(format!("/proc/{pid}/ns/mnt").as_str()).map(|st| (st.st_dev, st.st_ino))
    };
    let Ok(ours) = ns("self") else {
        return false;
    };
    let me = std::process::id().to_string();
    let Ok(proc) = fs::read_dir("/proc") else {
        return false;
    };
    !proc
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()) && *name != me)
        .any(|pid| ns(&pid).is_ok_and(|theirs| theirs == ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_program_makes_are_recognised() {
        assert_eq!(port_of("port-8080"), Some(8080));
        for name in [
            "port-",
            "port-08080",
            "port-+1",
            "port-80x",
            "port-65536",
            "link",
            "netns-1/..",
        ] {
            assert_eq!(port_of(name), None, "{name}");
        }
    }

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:2d:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 1234 00:2d:77 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 555 00:2d:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4321 00:2d:78 0 EOF\n";
        assert_eq!(flock_holder(locks, 0, 0x2d, 77), Some(1234));
        assert_eq!(flock_holder(locks, 0, 0x2d, 78), Some(4321));
        assert_eq!(flock_holder(locks, 0, 0x2e, 77), None);
    }

    /// Sweeps (every drain starts with one) run all the while a port is locked and
    /// given up over and over, its empty directory stale each time: a sweep's hold is
    /// never reported as another drain. A namespace no process has (inode 1), so the
    /// host's pin tree is used without touching a real namespace's entry.
    #[test]
    fn a_sweep_never_makes_a_drain_starting_beside_it_find_its_port_busy() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let root = PinRoot::open_or_create().expect("bpffs as root");
        let netns = Identity::from_dir_name(&format!("netns-1-{}", std::process::id())).unwrap();
        let port = 47_001;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let locked = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    PinRoot::open_or_create().unwrap().sweep_stale();
                }
            });
            let mut locked = 0;
            for _ in 0..20_000 {
                match root.lock_port(&netns, port, true) {
                    Ok(dir) => locked += usize::from(dir.is_some()),
                    // Removed by the sweep between each step, 8 times over: not a refusal.
                    Err(PinError::Contended { .. }) => {}
                    Err(err) => {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        panic!("a drain beside a sweep failed: {err}");
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            locked
        });
        if let Ok(Some(dir)) = root.lock_port(&netns, port, false) {
            dir.remove().unwrap();
        }
        let _ = root.dir.remove_dir(&netns.dir_name());
        assert!(locked > 19_000, "locked {locked} times of 20000");
    }

    #[test]
    fn busy_names_the_holder() {
        let busy = PinError::Busy {
            port: 8080,
            holder: Some(42),
        };
        assert_eq!(
            busy.to_string(),
            "port 8080 is already being drained by pid 42"
        );
        assert!(busy.is_environment());
    }
}

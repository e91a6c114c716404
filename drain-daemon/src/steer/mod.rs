//! Steering: new connections stay away from a draining listener.
//!
//! An eBPF sk_lookup program (drain-ebpf; Linux 5.9+) is attached to the current network
//! namespace, one instance per drained port. Every new connection that would reach one
//! of the port's draining listeners (kept in a SOCKHASH) is handed to a successor
//! listener if one is set ([`Steering::set_successors`]), and refused otherwise (RST,
//! the client sees ECONNREFUSED at once). The kernel deletes a socket from every
//! SOCKHASH when the socket closes, so the steering cannot outlive the listener: a
//! service started later on the same port gets its connections again. Each instance's
//! maps and loops are sized for its drain ([`Size`]): the verifier walks the loops once
//! per slot, and that walk was most of a drain's CPU.
//!
//! The program, its maps and its link are pinned in bpffs under
//! `/sys/fs/bpf/drain-daemon/netns-<inode>-<cookie>/port-<port>/` (`pins`), so the refusal
//! lasts after `drainctl` exits (between the end of `ExecStop=` and the service's exit,
//! new clients are refused rather than accepted and then cut). A drain holds the port's
//! pin directory locked for its whole run: a second drain of the port is refused
//! ([`PinError::Busy`]) instead of sharing, and later tearing down, the first one's
//! steering. A pinned drain whose listeners are all gone, or whose [`Expiry`] has passed,
//! is stale and is removed by the next [`Steering::lock`] or [`sweep_stale`] in any
//! namespace. Where no bpffs outlives this process, a holder process keeps the link
//! (`holder`); the caller is told which through [`Persistence`].
//!
//! Every refusal ends at the latest at an [`Expiry`] that the program reads from its own
//! map: one left behind by a killed drain, or over a server that keeps running, does not
//! refuse for good, and no process needs to be alive to end it.

mod expiry;
mod holder;
mod pins;

use std::{
    borrow::BorrowMut,
    collections::BTreeSet,
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use aya::{
    maps::{Array, IterableMap as _, Map, MapData, MapError, PerCpuArray, SockHash},
    programs::{links::FdLink, ProgramError, SkLookup},
    EbpfLoader,
};
use aya_log::EbpfLogger;
use drain_common::{
    CLOSE_SOCKETS_MAP, CLOSE_STATE_MAP, COUNTS_MAP, COUNT_REFUSED, COUNT_STEERED, EXPIRY_MAP,
    LISTENERS_MAP, LISTENER_SLOTS, LISTENER_SLOTS_GLOBAL, MAX_LISTENERS_PER_PORT, PORT_GLOBAL,
    PROGRAM_NAME, SUCCESSORS_MAP, SUCCESSOR_SLOTS_GLOBAL, V6ONLY_MAP,
};
use nix::sys::socket::{getsockopt, sockopt::Ipv6V6Only};
use tracing::{info, warn};

use self::pins::{PinRoot, PortDir};
pub use self::{expiry::Expiry, holder::run_if_asked, pins::PinError};
use crate::netns::{self, Netns};

/// The sk_lookup program, built by this crate's build script.
pub(crate) static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drain-ebpf"));

/// Why steering could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("opening this network namespace (/proc/thread-self/ns/net): {0}")]
    Netns(#[source] io::Error),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("not allowed to load BPF programs (needs root, or CAP_BPF and CAP_NET_ADMIN): {0}")]
    PermissionDenied(#[source] ProgramError),
    #[error("this kernel cannot run sk_lookup programs (needs Linux 5.9+ with BPF; BPF_PROG_LOAD or bpf_link_create was refused): {0}")]
    Unsupported(#[source] ProgramError),
    #[error("sk_lookup program: {0}")]
    Program(#[source] ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("adding a listener to a steering map (BPF_MAP_UPDATE_ELEM): {0}")]
    AddListener(#[source] MapError),
    #[error("reading whether a listener is IPv6-only (getsockopt IPV6_V6ONLY): {0}")]
    V6Only(#[source] io::Error),
    #[error("port {port} has {count} listeners to drain; one drain holds at most {MAX_LISTENERS_PER_PORT}: drain part of them (--pid names one process tree)")]
    TooManyListeners { port: u16, count: usize },
    #[error("{count} successor listeners for port {port}; its steering holds at most {room}")]
    TooManySuccessors {
        port: u16,
        count: usize,
        room: usize,
    },
    #[error("the steering map of port {port} has no free slot left: drainctl release --port {port}, then drain again")]
    NoFreeSlot { port: u16 },
    #[error("pinning under {path}: {message}")]
    Pin { path: PathBuf, message: String },
    #[error(transparent)]
    Pins(#[from] PinError),
}

impl SteerError {
    /// True when the machine or the input is at fault (exit code 3), not the tool.
    pub fn is_environment(&self) -> bool {
        match self {
            SteerError::PermissionDenied(_)
            | SteerError::Unsupported(_)
            | SteerError::TooManyListeners { .. }
            | SteerError::TooManySuccessors { .. }
            | SteerError::NoFreeSlot { .. } => true,
            SteerError::Pins(err) => err.is_environment(),
            _ => false,
        }
    }
}

/// How long the refusal lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// Pinned in bpffs at this directory: the refusal lasts until the draining listeners
    /// close (or [`release`]), whatever happens to this process.
    Pinned(PathBuf),
    /// Not pinned (no bpffs outlives this process): a holder process, this pid, keeps
    /// the refusal until the draining listeners close or its [`Expiry`].
    Held(u32),
    /// Neither pinned nor held ([`Lasting::WhileHeld`], or no holder could be started):
    /// the refusal lasts while this [`Steering`] lives.
    Process,
}

impl Persistence {
    /// Whether the refusal outlives this process (until the listeners close or its
    /// [`Expiry`]).
    pub fn outlives_process(&self) -> bool {
        !matches!(self, Persistence::Process)
    }
}

/// How long a caller wants the refusal to last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lasting {
    /// Until the draining listeners close (pinned where bpffs allows): the refusal
    /// outlives the process that set it up, up to the server's exit.
    UntilListenersClose,
    /// While the [`Steering`] lives. For a listener that a process other than the
    /// drained servers also holds (pid 1 with socket activation, a supervisor): it does
    /// not close when they exit, and the next instance that inherits it must not find it
    /// refused.
    WhileHeld,
}

/// The listening sockets a steering starts with, duplicated into this process.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The draining listeners: new connections stay away from them.
    pub draining: Vec<OwnedFd>,
    /// The listeners that take those connections instead; none refuses them.
    pub successors: Vec<OwnedFd>,
}

/// How many listeners a new steering is sized for. The verifier's work, and so the CPU a
/// drain spends loading the program, grows with the slots (see
/// [`drain_common::LISTENER_SLOTS_GLOBAL`]); each set gets
/// [`drain_common::slots_for`] its count, the draining ones twice that (room for a
/// replacing set beside the old one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// The draining listeners.
    pub draining: usize,
    /// The successors found when the drain starts.
    pub successors: usize,
}

impl Size {
    fn listener_slots(self) -> u32 {
        2 * drain_common::slots_for(count_u32(self.draining))
    }

    fn successor_slots(self) -> u32 {
        drain_common::slots_for(count_u32(self.successors))
    }
}

fn count_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// One drain's hold on its port ([`Steering::lock`]): no other drain, release or sweep
/// touches the port's pins while it lives.
pub struct PortLock {
    port: u16,
    netns: Netns,
    pins: Option<PortDir>,
}

/// The refusal of new connections to one port's draining listeners.
pub struct Steering {
    port: u16,
    /// The slots of `listeners` and `v6only`.
    listener_slots: u32,
    /// The slots of `successors`: how many successors new connections can go to.
    successor_slots: u32,
    listeners: SockHash<MapData, u32>,
    /// Whether the listener in the same slot of `listeners` is IPv6-only.
    v6only: Array<MapData, u32>,
    successors: SockHash<MapData, u32>,
    counts: PerCpuArray<MapData, u64>,
    /// When the program stops steering ([`Expiry`]).
    expiry: Array<MapData, u64>,
    persistence: Persistence,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// The port's locked pin directory (pinned into or not, see [`Lasting`]): no other
    /// drain, release or sweep touches the port's pins until this is dropped.
    pins: Option<PortDir>,
    /// Holds the link when it is not pinned; dropping it detaches the program.
    _link: Option<FdLink>,
}

impl Steering {
    /// Starts steering new connections away from `port`'s draining listeners: to the
    /// successors `borrow` returns ([`Sockets`]), refused when there are none. `borrow`
    /// returns descriptors of the listening sockets duplicated into this process; it is
    /// called once the program is loaded and verified, right before it is attached, and
    /// the descriptors are closed on return: a duplicate keeps a listener open after its
    /// server closes it (a graceful stop begun meanwhile), and connections the kernel
    /// queues on it then are reset when the duplicate closes, so it is held for the map
    /// inserts and the attach only, not for the load. The successors are in their map
    /// before the draining listeners are in theirs, so no new connection is refused while
    /// a successor listens.
    ///
    /// A new program instance is sized for `size`. Reuses the pinned program of an
    /// earlier drain of the same port in this namespace if its listeners are still open,
    /// it has room for `size`, and the refusal is to last until they close;
    /// [`Lasting::WhileHeld`] unpins it instead. Minimum kernel: 5.9 (sk_lookup, bpf_link
    /// for network namespaces, listening sockets in SOCKHASH). `lock` is the port's, from
    /// [`Steering::lock`]. The program steers nothing after `ends` ([`Steering::end_by`]
    /// moves it).
    pub fn refuse<E: From<SteerError>>(
        lock: PortLock,
        size: Size,
        borrow: impl FnOnce() -> Result<Sockets, E>,
        lasting: Lasting,
        ends: Expiry,
    ) -> Result<Self, E> {
        let PortLock { port, netns, pins } = lock;
        // Only stalls are injected here (a slow load under CPU contention).
        let _ = crate::failpoint::hit(crate::failpoint::Point::Attach, port);
        let pin = lasting == Lasting::UntilListenersClose;
        match pins {
            Some(pins) if pin && pins.has_link() => match open_pinned(pins, size)? {
                Ok(mut pinned) => {
                    info!(port, ?pinned.persistence, "reusing the pinned steering of an earlier drain");
                    pinned.end_by(ends)?;
                    let sockets = borrow()?;
                    pinned.set_successors(&borrowed_fds(&sockets.successors, port)?)?;
                    pinned.replace_listeners(&borrowed_fds(&sockets.draining, port)?)?;
                    Ok(pinned)
                }
                Err(pins) => {
                    load_and_attach(port, netns.file(), size, borrow, Some(pins), pin, ends)
                }
            },
            Some(pins) => {
                // An earlier drain's pins would go on refusing after this one.
                pins.unpin().map_err(|err| SteerError::Pin {
                    path: pins.path().to_path_buf(),
                    message: format!("removing an earlier drain's pins: {err}"),
                })?;
                load_and_attach(port, netns.file(), size, borrow, Some(pins), pin, ends)
            }
            None => load_and_attach(port, netns.file(), size, borrow, None, pin, ends),
        }
    }

    /// Locks `port`'s pin directory in this network namespace for one drain, from its
    /// start (before its accept grace: a second drain of the port is refused at once,
    /// not after waiting out a grace of its own) to its end. Where bpffs is unavailable
    /// there is nothing to lock, and the refusal lasts while this process runs.
    pub fn lock(port: u16) -> Result<PortLock, SteerError> {
        let netns = Netns::current().map_err(SteerError::Netns)?;
        let pins = match PinRoot::open_or_create() {
            Ok(root) => {
                root.sweep_stale();
                root.lock_port(&netns.identity(), port, true)?
            }
            Err(err) if err.is_unavailable() => {
                info!("bpffs is not available ({err}); the refusal is not pinned");
                None
            }
            Err(err) => return Err(err.into()),
        };
        Ok(PortLock { port, netns, pins })
    }

    /// The port whose listeners are refused.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long the refusal lasts.
    pub fn persistence(&self) -> &Persistence {
        &self.persistence
    }

    /// How many draining listeners are still open (the kernel forgets closed ones).
    pub fn open_listeners(&self) -> usize {
        self.listeners.keys().filter(Result::is_ok).count()
    }

    /// New connections refused so far (no successor matched), summed over CPUs.
    pub fn refused_connections(&self) -> u64 {
        self.count(COUNT_REFUSED)
    }

    /// New connections handed to a successor so far, summed over CPUs.
    pub fn steered_connections(&self) -> u64 {
        self.count(COUNT_STEERED)
    }

    fn count(&self, index: u32) -> u64 {
        counter(&self.counts, index)
    }

    /// Hands new connections to these listeners (descriptors duplicated into this
    /// process) instead of refusing them; an empty set refuses again. At most
    /// [`Steering::successor_room`]: the caller chooses which.
    pub fn set_successors(&mut self, successors: &[BorrowedFd<'_>]) -> Result<(), SteerError> {
        fill_successors(
            &mut self.successors,
            self.successor_slots,
            successors,
            self.port,
        )
    }

    /// How many successors [`Steering::set_successors`] takes.
    pub fn successor_room(&self) -> usize {
        self.successor_slots as usize
    }

    /// The reader of the program's log records (aya-log), to be polled by the caller.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }

    /// Stops refusing now: the program steers nothing from this instant (a holder sees
    /// that and exits), and its pins are removed.
    pub fn release(mut self) -> Result<(), PinError> {
        if let Err(err) = self.end_by(Expiry::now()) {
            warn!(port = self.port, "{err}");
        }
        match self.pins {
            Some(pins) => Ok(pins.remove()?),
            None => Ok(()),
        }
    }

    /// Ends the steering at `ends` at the latest: the program stops refusing then,
    /// whether or not this process, or a holder, is still alive.
    pub fn end_by(&mut self, ends: Expiry) -> Result<(), SteerError> {
        ends.write(&mut self.expiry).map_err(map_error(EXPIRY_MAP))
    }

    fn replace_listeners(&mut self, listeners: &[BorrowedFd<'_>]) -> Result<(), SteerError> {
        replace_sockets(
            &mut self.listeners,
            &mut self.v6only,
            self.listener_slots,
            listeners,
            self.port,
        )
    }

    /// Whether this (pinned) steering can take a drain of `size` without a new program:
    /// the new set of listeners fits beside the open ones, the successors in its room.
    fn has_room_for(&self, size: Size) -> bool {
        let open = self.open_listeners();
        open + size.draining <= self.listener_slots as usize
            && size.successors.min(MAX_LISTENERS_PER_PORT as usize) <= self.successor_room()
    }
}

/// Puts `successors` into slots 0..n of `map` and empties the slots after them. The
/// program spreads new connections over slots 0..n (drain-ebpf, program.rs): they are
/// filled in place (an update replaces a slot at once), then the rest are emptied.
fn fill_successors<T: BorrowMut<MapData>>(
    map: &mut SockHash<T, u32>,
    slots: u32,
    successors: &[BorrowedFd<'_>],
    port: u16,
) -> Result<(), SteerError> {
    if successors.len() > slots as usize {
        return Err(SteerError::TooManySuccessors {
            port,
            count: successors.len(),
            room: slots as usize,
        });
    }
    let previous: BTreeSet<u32> = map.keys().filter_map(Result::ok).collect();
    for (slot, socket) in (0..).zip(successors) {
        map.insert(slot, socket.as_raw_fd(), 0)
            .map_err(SteerError::AddListener)?;
    }
    let filled = successors.len() as u32;
    for slot in previous.into_iter().filter(|slot| *slot >= filled) {
        // Gone already if that listener closed meanwhile: nothing to undo.
        let _ = map.remove(&slot);
    }
    Ok(())
}

/// Puts the draining listeners `sockets` into free slots of `map` first and only then
/// removes the previous entries, so a listener steered before stays steered throughout.
/// Each slot's IPv6-only flag is written to `v6only` before its socket goes in, so the
/// program never sees a listener with another one's flag. Both maps have `slots` slots:
/// room for two sets of the size the program was loaded for
/// ([`Steering::has_room_for`] checks a reused one).
fn replace_sockets<T: BorrowMut<MapData>, U: BorrowMut<MapData>>(
    map: &mut SockHash<T, u32>,
    v6only: &mut Array<U, u32>,
    slots: u32,
    sockets: &[BorrowedFd<'_>],
    port: u16,
) -> Result<(), SteerError> {
    let previous: BTreeSet<u32> = map.keys().filter_map(Result::ok).collect();
    let mut free = (0..slots.min(LISTENER_SLOTS)).filter(|slot| !previous.contains(slot));
    for socket in sockets {
        let slot = free.next().ok_or(SteerError::NoFreeSlot { port })?;
        v6only
            .set(slot, u32::from(is_v6only(socket)?), 0)
            .map_err(SteerError::AddListener)?;
        map.insert(slot, socket.as_raw_fd(), 0)
            .map_err(SteerError::AddListener)?;
    }
    for slot in previous {
        // Gone already if that listener closed meanwhile: nothing to undo.
        let _ = map.remove(&slot);
    }
    Ok(())
}

/// Whether `socket` is an IPv6 socket that takes no IPv4 connections (`IPV6_V6ONLY`).
/// An IPv4 socket has no such option (the kernel answers EOPNOTSUPP or ENOPROTOOPT).
fn is_v6only(socket: &BorrowedFd<'_>) -> Result<bool, SteerError> {
    match getsockopt(socket, Ipv6V6Only) {
        Ok(v6only) => Ok(v6only),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOPROTOOPT) => Ok(false),
        Err(errno) => Err(SteerError::V6Only(errno.into())),
    }
}

/// The error of an operation on map `name` of a loaded object.
fn map_error(name: &'static str) -> impl FnOnce(MapError) -> SteerError {
    move |source| SteerError::Map { name, source }
}

/// Takes map `name` out of a loaded object (each of the object's programs' loaders owns
/// the maps it uses).
pub(crate) fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> Result<Map, MapError> {
    ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_string(),
    })
}

/// Counter `index` of a program's `COUNTS` array, summed over CPUs (0 if unreadable:
/// counts are for reports, never worth failing a drain).
pub(crate) fn counter(counts: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    counts
        .get(&index, 0)
        .map(|per_cpu| per_cpu.iter().sum())
        .unwrap_or(0)
}

/// Stops refusing connections to `port` in this network namespace (a pinned drain set up
/// by an earlier `drainctl drain`). Returns false when nothing was pinned for the port.
pub fn release(port: u16) -> Result<bool, SteerError> {
    release_checked(port, || Ok::<(), SteerError>(()))
}

/// [`release`], if `may` allows it: asked under the port's lock (no drain changes the
/// pins meanwhile), and only when the pins still refuse something (stale ones go
/// whoever asks).
pub fn release_checked<E: From<SteerError>>(
    port: u16,
    may: impl FnOnce() -> Result<(), E>,
) -> Result<bool, E> {
    let identity = netns::Identity::current().map_err(SteerError::Netns)?;
    let Some(root) = PinRoot::open_existing().map_err(SteerError::from)? else {
        return Ok(false);
    };
    let Some(pins) = root
        .lock_port(&identity, port, false)
        .map_err(SteerError::from)?
    else {
        return Ok(false);
    };
    let pinned = pins.has_link();
    if pinned && pins.still_refusing() {
        may()?;
    }
    end_now(&pins);
    pins.remove()
        .map_err(|err| SteerError::from(PinError::from(err)))?;
    Ok(pinned)
}

/// Makes the pinned program in `pins` steer nothing from now on. Unpinning its link
/// detaches it too, but the kernel frees a link's last reference on a workqueue, after
/// the unlink has returned: a client connecting right after a release could still be
/// refused. The map update takes effect before it returns.
fn end_now(pins: &PortDir) {
    let expiry = pins
        .open_map(pins::EXPIRY)
        .ok()
        .and_then(|map| Array::<MapData, u64>::try_from(Map::Array(map)).ok());
    if let Some(mut expiry) = expiry {
        if let Err(err) = Expiry::now().write(&mut expiry) {
            warn!(port = pins.port(), "ending the refusal at once: {err}");
        }
    }
}

/// Removes every pinned drain, in any network namespace, whose listeners are all closed.
/// Their programs no longer refuse anything; this frees them.
pub fn sweep_stale() {
    match PinRoot::open_existing() {
        Ok(Some(root)) => root.sweep_stale(),
        Ok(None) => {}
        Err(err) => warn!("not sweeping stale pinned drains: {err}"),
    }
}

/// Whether new connections to `port` are refused in this network namespace by a pinned
/// drain (one whose listeners are still open).
pub fn is_refusing(port: u16) -> bool {
    let Ok(identity) = netns::Identity::current() else {
        return false;
    };
    PinRoot::open_existing()
        .ok()
        .flatten()
        .and_then(|root| root.find_port(&identity, port).ok())
        .is_some_and(|dir| pins::still_refusing(&dir))
}

/// Opens the drain pinned in `pins` if it still refuses something and has room for a
/// drain of `size`; unpins it otherwise and hands the directory back.
fn open_pinned(pins: PortDir, size: Size) -> Result<Result<Steering, PortDir>, SteerError> {
    let opened = (|| {
        let listeners = pins.open_map(pins::LISTENERS).ok()?;
        let listener_slots = listeners.info().ok()?.max_entries();
        let listeners = SockHash::try_from(Map::SockHash(listeners)).ok()?;
        listeners.keys().next()?.ok()?;
        let successors = pins.open_map(pins::SUCCESSORS).ok()?;
        let successor_slots = successors.info().ok()?.max_entries();
        let successors = SockHash::try_from(Map::SockHash(successors)).ok()?;
        let counts = pins.open_map(pins::COUNTS).ok()?;
        let counts = PerCpuArray::try_from(Map::PerCpuArray(counts)).ok()?;
        // Missing in a drain pinned by an older version: that one is set up anew.
        let v6only = pins.open_map(pins::V6ONLY).ok()?;
        let v6only = Array::try_from(Map::Array(v6only)).ok()?;
        let expiry = pins.open_map(pins::EXPIRY).ok()?;
        let expiry = Array::try_from(Map::Array(expiry)).ok()?;
        let link = FdLink::from(pins.open_link().ok()?);
        let logger = link
            .info()
            .ok()
            .and_then(|info| EbpfLogger::init_from_id(info.program_id()).ok());
        Some(Steering {
            port: pins.port(),
            listener_slots,
            successor_slots,
            listeners,
            v6only,
            successors,
            counts,
            expiry,
            persistence: Persistence::Pinned(pins.path().to_path_buf()),
            logger,
            pins: None,
            _link: None,
        })
    })();
    let removing = match opened {
        Some(steering) if steering.has_room_for(size) => {
            return Ok(Ok(Steering {
                pins: Some(pins),
                ..steering
            }))
        }
        Some(_) => {
            info!(
                port = pins.port(),
                "the pinned steering of an earlier drain has no room for this drain's listeners: loading one sized for them"
            );
            "a pinned drain too small for this one"
        }
        None => "a stale pinned drain",
    };
    pins.unpin().map_err(|err| SteerError::Pin {
        path: pins.path().to_path_buf(),
        message: format!("removing {removing}: {err}"),
    })?;
    Ok(Err(pins))
}

/// The descriptors of `sockets` to put in a map, at most [`MAX_LISTENERS_PER_PORT`].
fn borrowed_fds(sockets: &[OwnedFd], port: u16) -> Result<Vec<BorrowedFd<'_>>, SteerError> {
    if sockets.len() > MAX_LISTENERS_PER_PORT as usize {
        return Err(SteerError::TooManyListeners {
            port,
            count: sockets.len(),
        });
    }
    Ok(sockets.iter().map(AsFd::as_fd).collect())
}

/// Loads a new instance of the program for `port` with the sockets `borrow` returns in
/// its maps, attaches it, and pins it into the locked `pins` when given and `pin`;
/// unpinned, it is held by the returned [`Steering`] (with the lock). The sockets go in
/// before the program is attached and pinned, so nothing ever sees it without them.
fn load_and_attach<E: From<SteerError>>(
    port: u16,
    netns: &fs::File,
    size: Size,
    borrow: impl FnOnce() -> Result<Sockets, E>,
    pins: Option<PortDir>,
    pin: bool,
    ends: Expiry,
) -> Result<Steering, E> {
    let log_level = if tracing::enabled!(tracing::Level::DEBUG) {
        aya_log::Level::Debug
    } else {
        aya_log::Level::Info
    };
    let (listener_slots, successor_slots) = (size.listener_slots(), size.successor_slots());
    let mut ebpf = EbpfLoader::new()
        .override_global(PORT_GLOBAL, &port, true)
        .override_global(LISTENER_SLOTS_GLOBAL, &listener_slots, true)
        .override_global(SUCCESSOR_SLOTS_GLOBAL, &successor_slots, true)
        .map_max_entries(LISTENERS_MAP, listener_slots)
        .map_max_entries(V6ONLY_MAP, listener_slots)
        .map_max_entries(SUCCESSORS_MAP, successor_slots)
        // The object holds the sk_msg program too (close_http): its maps, 65536 entries
        // each and the hash preallocated, are created at the least size.
        .map_max_entries(CLOSE_SOCKETS_MAP, 1)
        .map_max_entries(CLOSE_STATE_MAP, 1)
        .override_global(aya_log::LEVEL, &(log_level as u8), true)
        .load(PROGRAM_OBJECT)
        .map_err(SteerError::from)?;
    // Must outlive the program load: it owns the log map the program refers to.
    let logger = match EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(err) => {
            warn!("eBPF log records are not available: {err}");
            None
        }
    };
    let take =
        |ebpf: &mut aya::Ebpf, name: &'static str| take_map(ebpf, name).map_err(map_error(name));
    let mut listeners_map = take(&mut ebpf, LISTENERS_MAP)?;
    let mut v6only_map = take(&mut ebpf, V6ONLY_MAP)?;
    let mut successors_map = take(&mut ebpf, SUCCESSORS_MAP)?;
    let counts_map = take(&mut ebpf, COUNTS_MAP)?;
    let mut expiry_map = take(&mut ebpf, EXPIRY_MAP)?;
    // Before the attach: no instant of the program's life is without an end.
    ends.write(
        &mut Array::<&mut MapData, u64>::try_from(&mut expiry_map)
            .map_err(map_error(EXPIRY_MAP))?,
    )
    .map_err(map_error(EXPIRY_MAP))?;
    let mut borrowed = SockHash::<&mut MapData, u32>::try_from(&mut listeners_map)
        .map_err(map_error(LISTENERS_MAP))?;
    let mut v6only =
        Array::<&mut MapData, u32>::try_from(&mut v6only_map).map_err(map_error(V6ONLY_MAP))?;
    let program: &mut SkLookup = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| SteerError::Program(ProgramError::UnexpectedProgramType))?
        .try_into()
        .map_err(SteerError::Program)?;
    program.load().map_err(classify_program_error)?;
    let sockets = borrow()?;
    let mut successors = SockHash::<&mut MapData, u32>::try_from(&mut successors_map)
        .map_err(map_error(SUCCESSORS_MAP))?;
    fill_successors(
        &mut successors,
        successor_slots,
        &borrowed_fds(&sockets.successors, port)?,
        port,
    )?;
    replace_sockets(
        &mut borrowed,
        &mut v6only,
        listener_slots,
        &borrowed_fds(&sockets.draining, port)?,
        port,
    )?;
    let link_id = program.attach(netns).map_err(classify_program_error)?;
    drop(sockets);
    let link = FdLink::from(program.take_link(link_id).map_err(SteerError::Program)?);

    let maps = [
        (pins::LISTENERS, &listeners_map),
        (pins::V6ONLY, &v6only_map),
        (pins::SUCCESSORS, &successors_map),
        (pins::COUNTS, &counts_map),
        (pins::EXPIRY, &expiry_map),
    ];
    let (persistence, pins, link) = match pins {
        Some(pins) if !pin => (Persistence::Process, Some(pins), Some(link)),
        Some(pins) => match pin_all(&pins, &maps, link) {
            Ok(()) => (
                Persistence::Pinned(pins.path().to_path_buf()),
                Some(pins),
                None,
            ),
            Err((err, Some(link))) => {
                warn!(dir = %pins.path().display(), "cannot pin the steering program ({err})");
                let _ = pins.remove();
                (Persistence::Process, None, Some(link))
            }
            Err((message, None)) => {
                let path = pins.path().to_path_buf();
                let _ = pins.remove();
                return Err(SteerError::Pin { path, message }.into());
            }
        },
        None => (Persistence::Process, None, Some(link)),
    };
    let listeners = SockHash::try_from(listeners_map).map_err(map_error(LISTENERS_MAP))?;
    let v6only = Array::try_from(v6only_map).map_err(map_error(V6ONLY_MAP))?;
    let successors = SockHash::try_from(successors_map).map_err(map_error(SUCCESSORS_MAP))?;
    let counts = PerCpuArray::try_from(counts_map).map_err(map_error(COUNTS_MAP))?;
    let expiry = Array::try_from(expiry_map).map_err(map_error(EXPIRY_MAP))?;
    let persistence = match (&persistence, &link) {
        (Persistence::Process, Some(link)) if pin => hold(port, link, &listeners, &expiry),
        _ => persistence,
    };
    info!(port, ?persistence, "attached the sk_lookup program");
    Ok(Steering {
        port,
        listener_slots,
        successor_slots,
        listeners,
        v6only,
        successors,
        counts,
        expiry,
        persistence,
        logger,
        pins,
        _link: link,
    })
}

/// Hands an unpinned refusal that is to last until the listeners close to a holder
/// process; where none can be started, it lasts while this process runs, and says so.
fn hold(
    port: u16,
    link: &FdLink,
    listeners: &SockHash<MapData, u32>,
    expiry: &Array<MapData, u64>,
) -> Persistence {
    let held = link.info().map_err(io::Error::other).and_then(|info| {
        holder::spawn(
            port,
            info.id(),
            listeners.map().fd().as_fd(),
            expiry.map().fd().as_fd(),
        )
    });
    match held {
        Ok(pid) => {
            info!(port, holder = pid, "no bpffs outlives this process: a holder process keeps the refusal until the listener closes");
            Persistence::Held(pid)
        }
        Err(err) => {
            warn!(port, "no bpffs outlives this process and no holder process could be started ({err}); new connections are refused only while this process runs");
            Persistence::Process
        }
    }
}

/// Pins the maps, then the link. If the maps cannot be pinned the link is handed back so
/// the caller can hold it; aya consumes the link when pinning it, so a failure there is
/// final.
fn pin_all(
    pins: &PortDir,
    maps: &[(&str, &Map)],
    link: FdLink,
) -> Result<(), (String, Option<FdLink>)> {
    if let Err(err) = maps
        .iter()
        .try_for_each(|(name, map)| pins.pin_map(name, map))
    {
        return Err((err, Some(link)));
    }
    pins.pin_link(link).map_err(|err| (err, None))
}

fn classify_program_error(err: ProgramError) -> SteerError {
    let errno = match &err {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => SteerError::PermissionDenied(err),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            SteerError::Unsupported(err)
        }
        _ => SteerError::Program(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall_error(errno: i32) -> ProgramError {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_link_create",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn kernel_refusals_are_told_apart() {
        assert!(matches!(
            classify_program_error(syscall_error(libc::EPERM)),
            SteerError::PermissionDenied(_)
        ));
        // What a kernel without sk_lookup (before 5.9) answers to the program type or
        // the attach type.
        for errno in [libc::EINVAL, libc::EOPNOTSUPP] {
            let err = classify_program_error(syscall_error(errno));
            assert!(matches!(err, SteerError::Unsupported(_)), "{err}");
            assert!(err.to_string().contains("Linux 5.9"), "{err}");
        }
        assert!(matches!(
            classify_program_error(syscall_error(libc::ENOMEM)),
            SteerError::Program(_)
        ));
    }
}

//! Asking HTTP/1.x clients to close: `Connection: close` written into a response.
//!
//! A client that sends its next request the instant it reads an answer leaves no moment
//! in which a close from outside is safe ([`crate::drain`]'s boundaries need a pause).
//! nginx ends such connections itself on a graceful stop by answering the last request
//! with `Connection: close`: the client reads the whole response, closes, and sends its
//! next request on a new connection (to the successor). The drain does the same from
//! outside: it borrows the server's socket ([`crate::pidfd`], identity checked by cookie)
//! and puts it in a SOCKHASH with the sk_msg program of drain-ebpf (`close_http.rs`),
//! which inserts the header after the status line of a response head only where it can
//! prove the write starts a response ([`drain_common::inband`]), once, and lets
//! everything else through untouched. The connection then ends on its own when the
//! client closes it. With `--websocket-close`, a websocket's next server message at such
//! a point gets a close frame (1001, going away) instead.
//!
//! The map is never pinned: when the drain ends (or dies), the map goes and the kernel
//! gives every socket in it back its normal send path.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, OwnedFd},
    sync::OnceLock,
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, SockHash},
    programs::{ProgramError, SkMsg},
    Ebpf, EbpfLoader,
};
use drain_common::{
    boundary::Inspection, FlowKey, CLOSE_PROGRAM_NAME, CLOSE_SOCKETS_MAP, CLOSE_STATE_MAP,
    COUNTS_MAP, COUNT_CLOSE_INJECTED, COUNT_LEFT_ALONE, COUNT_WEBSOCKET_CLOSED, LISTENERS_MAP,
    SUCCESSORS_MAP, TCP_SOCK_FIELDS, TCP_SOCK_OFFSET_GLOBALS, V6ONLY_MAP, WEBSOCKET_CLOSE_GLOBAL,
};
use rustix::net::{getpeername, getsockname};
use tracing::debug;

use crate::{
    inventory::Connection,
    kernel_btf::{self, BtfError},
    pidfd::{self, PidfdError},
    steer::{counter, take_map, PROGRAM_OBJECT},
};

/// Why the rewriting could not be set up, or a connection not added to it.
#[derive(Debug, thiserror::Error)]
pub enum CloseHttpError {
    #[error("finding struct tcp_sock's sequence numbers: {0}")]
    Btf(#[from] BtfError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("sk_msg program (BPF_PROG_LOAD / BPF_PROG_ATTACH; needs CONFIG_NET_SOCK_MSG, and CAP_PERFMON to read the server's TCP state): {0}")]
    Program(#[source] ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("borrowing the connection's socket: {0}")]
    Borrow(#[source] PidfdError),
    #[error("reading the borrowed socket's addresses (getsockname/getpeername): {0}")]
    Addresses(#[source] rustix::io::Errno),
    #[error(
        "adding the socket to the sk_msg map (BPF_MAP_UPDATE_ELEM; a kTLS socket is refused): {0}"
    )]
    Add(#[source] MapError),
}

/// Where a connection the drain tried to add stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    /// Could not be added (its socket not borrowed, or refused by the map).
    Refused,
    /// In the map, looked at by the program; the key of its record.
    InMap([u32; 11]),
    /// Taken out of the map once the program was done with it (asked it to close, or
    /// left it alone). Its record stays until it closes: a `sendmsg` that was already in
    /// the program when it was taken out must still find it finished.
    Released([u32; 11]),
}

/// The drain's connections whose output the program looks at for a response to write
/// `Connection: close` into.
pub struct CloseHttp {
    sockets: SockHash<MapData, u64>,
    /// The program's records ([`Inspection`], as its three words).
    state: HashMap<MapData, [u32; 11], [u32; 3]>,
    counts: PerCpuArray<MapData, u64>,
    /// Every connection tried, by cookie, until it closes.
    armed: StdHashMap<u64, Armed>,
    /// Holds the program, attached to `sockets`: dropping it detaches it.
    _ebpf: Ebpf,
}

impl CloseHttp {
    /// Loads the sk_msg program and attaches it to a fresh, empty map. `websocket_close`:
    /// the port's upgraded connections are websockets (`--websocket-close`).
    pub fn load(websocket_close: bool) -> Result<Self, CloseHttpError> {
        let offsets = tcp_sock_offsets()?;
        let websocket_close = u32::from(websocket_close);
        let mut loader = EbpfLoader::new();
        for (name, offset) in TCP_SOCK_OFFSET_GLOBALS.iter().zip(&offsets) {
            loader.override_global(name, offset, true);
        }
        // The object holds the steering program too: its maps are created at the least size.
        let mut ebpf = loader
            .override_global(WEBSOCKET_CLOSE_GLOBAL, &websocket_close, true)
            .map_max_entries(LISTENERS_MAP, 1)
            .map_max_entries(V6ONLY_MAP, 1)
            .map_max_entries(SUCCESSORS_MAP, 1)
            .load(PROGRAM_OBJECT)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            take_map(ebpf, name).map_err(|source| CloseHttpError::Map { name, source })
        };
        let map_error = |name| move |source| CloseHttpError::Map { name, source };
        let sockets = SockHash::<MapData, u64>::try_from(take(&mut ebpf, CLOSE_SOCKETS_MAP)?)
            .map_err(map_error(CLOSE_SOCKETS_MAP))?;
        let state = HashMap::try_from(take(&mut ebpf, CLOSE_STATE_MAP)?)
            .map_err(map_error(CLOSE_STATE_MAP))?;
        let counts =
            PerCpuArray::try_from(take(&mut ebpf, COUNTS_MAP)?).map_err(map_error(COUNTS_MAP))?;
        let program: &mut SkMsg = ebpf
            .program_mut(CLOSE_PROGRAM_NAME)
            .ok_or(CloseHttpError::Program(ProgramError::UnexpectedProgramType))?
            .try_into()
            .map_err(CloseHttpError::Program)?;
        program.load().map_err(CloseHttpError::Program)?;
        if let Ok(info) = program.info() {
            debug!(
                verified_instructions = info.verified_instruction_count(),
                "in-band close: sk_msg program loaded"
            );
        }
        program
            .attach(sockets.fd())
            .map_err(CloseHttpError::Program)?;
        Ok(Self {
            sockets,
            state,
            counts,
            armed: StdHashMap::new(),
            _ebpf: ebpf,
        })
    }

    /// Whether `connection` was tried already (added, or refused) and is still open.
    pub fn is_armed(&self, connection: &Connection) -> bool {
        self.armed.contains_key(&connection.socket.id.cookie)
    }

    /// Adds `connection` so the program looks at its output for a response to write
    /// `Connection: close` into. Its socket is borrowed from its owner and checked to be
    /// that very connection first.
    /// Tried once per connection: one that fails (a kTLS socket the map refuses) is not
    /// borrowed again every pass.
    pub fn arm(&mut self, connection: &Connection) -> Result<(), CloseHttpError> {
        let Some(owner) = &connection.owner else {
            return Ok(());
        };
        self.armed
            .insert(connection.socket.id.cookie, Armed::Refused);
        let socket = pidfd::duplicate_socket(owner.pid, owner.fd, &connection.socket)
            .map_err(CloseHttpError::Borrow)?;
        let key = flow_key(&socket)?.to_words();
        let cookie = connection.socket.id.cookie;
        // A record left by an earlier connection with the same addresses must not be
        // taken for this one's.
        let _ = self.state.remove(&key);
        self.sockets
            .insert(cookie, socket.as_fd(), 0)
            .map_err(CloseHttpError::Add)?;
        self.armed.insert(cookie, Armed::InMap(key));
        Ok(())
    }

    /// Takes the connections the program is done with out of the map, so nothing they
    /// send later goes through it, and forgets those no longer `open` (the kernel
    /// removes a closed socket from the map itself).
    pub fn retire(&mut self, open: impl Fn(u64) -> bool) {
        // One read of the records, not a lookup per armed connection.
        let done: HashSet<[u32; 11]> = self
            .state
            .iter()
            .filter_map(Result::ok)
            .filter(|&(_, [read_mark, flags, received_mark])| {
                Inspection {
                    read_mark,
                    flags,
                    received_mark,
                }
                .finished()
            })
            .map(|(key, _)| key)
            .collect();
        let mut released = 0;
        for (cookie, armed) in &mut self.armed {
            let Armed::InMap(key) = *armed else { continue };
            if done.contains(&key) {
                // Gone already if the socket closed meanwhile.
                let _ = self.sockets.remove(cookie);
                *armed = Armed::Released(key);
                released += 1;
            }
        }
        let before = self.armed.len();
        self.armed.retain(|cookie, armed| {
            let keep = open(*cookie);
            if let (false, Armed::InMap(key) | Armed::Released(key)) = (keep, armed) {
                let _ = self.state.remove(key);
            }
            keep
        });
        if released > 0 || before != self.armed.len() {
            debug!(
                released,
                closed = before - self.armed.len(),
                in_map = self
                    .armed
                    .values()
                    .filter(|a| matches!(a, Armed::InMap(_)))
                    .count(),
                "in-band close: connections done with"
            );
        }
    }

    /// Responses that `Connection: close` was written into so far, summed over CPUs.
    pub fn rewritten(&self) -> u64 {
        counter(&self.counts, COUNT_CLOSE_INJECTED)
    }

    /// Websocket connections sent a close frame (1001, going away) so far.
    pub fn websockets_closed(&self) -> u64 {
        counter(&self.counts, COUNT_WEBSOCKET_CLOSED)
    }

    /// Connections the program left alone for good (output off the grammar, or a write
    /// the kernel would not let it change): closed at their boundaries instead.
    pub fn left_alone(&self) -> u64 {
        counter(&self.counts, COUNT_LEFT_ALONE)
    }
}

/// Where `struct tcp_sock` keeps the program's sequence numbers, read from the kernel's
/// BTF once per process: the layout is the running kernel's, and the daemon loads the
/// program for every drain.
fn tcp_sock_offsets() -> Result<[u32; 4], BtfError> {
    static OFFSETS: OnceLock<[u32; 4]> = OnceLock::new();
    if let Some(offsets) = OFFSETS.get() {
        return Ok(*offsets);
    }
    let offsets = kernel_btf::field_offsets("tcp_sock", TCP_SOCK_FIELDS)?;
    Ok(*OFFSETS.get_or_init(|| offsets))
}

/// The connection as the sk_msg program sees it (`struct sk_msg_md`), read from the
/// borrowed socket itself so a dual-stack socket's v4-mapped addresses come out as the
/// kernel has them.
fn flow_key(socket: &OwnedFd) -> Result<FlowKey, CloseHttpError> {
    let local = SocketAddr::try_from(getsockname(socket).map_err(CloseHttpError::Addresses)?)
        .map_err(|_| CloseHttpError::Addresses(rustix::io::Errno::AFNOSUPPORT))?;
    let remote = getpeername(socket)
        .map_err(CloseHttpError::Addresses)?
        .and_then(|addr| SocketAddr::try_from(addr).ok())
        .ok_or(CloseHttpError::Addresses(rustix::io::Errno::NOTCONN))?;
    Ok(key_of(local, remote))
}

/// `sk_msg_md`'s encoding: addresses in network byte order, the remote port in network
/// byte order shifted into the upper half (little-endian hosts), the local port in host
/// byte order.
fn key_of(local: SocketAddr, remote: SocketAddr) -> FlowKey {
    let words = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            std::array::from_fn(|i| {
                u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
            })
        }
    };
    let family = match local {
        SocketAddr::V4(_) => 2,
        SocketAddr::V6(_) => 10,
    };
    FlowKey {
        family,
        remote_port: remote_port_word(remote.port()),
        local_port: u32::from(local.port()),
        remote_ip: words(remote.ip()),
        local_ip: words(local.ip()),
    }
}

#[cfg(target_endian = "little")]
fn remote_port_word(port: u16) -> u32 {
    u32::from(port.to_be()) << 16
}

#[cfg(target_endian = "big")]
fn remote_port_word(port: u16) -> u32 {
    u32::from(port)
}

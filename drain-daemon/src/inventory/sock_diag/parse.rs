//! The sock_diag wire format: kernel ABI numbers, the typed values of an answer, the
//! encoding of requests and the parsing of answers.
//!
//! Kept apart from the socket loop in [`super`] so that everything that reads bytes the
//! kernel sent is a pure function: unit-tested on hand-built messages and fuzzed
//! (`drain-daemon/tests/fuzz.rs`), since a parser that panics on a malformed answer would
//! take a drain down with it. Nothing here opens a socket.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::BitOr;

use super::{Result, SockDiagError};

// --- Kernel ABI (include/uapi/linux/{netlink,sock_diag,inet_diag,tcp}.h) -------------------

/// `sizeof(struct nlmsghdr)`.
pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(super) const NLM_F_DUMP: u16 = 0x300;
/// `nlmsg_type` of sock_diag queries and of their answers.
pub(super) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `nlmsg_type` of the destroy request (Linux 4.5).
pub(super) const SOCK_DESTROY: u16 = 21;
pub(super) const AF_INET: u8 = 2;
pub(super) const AF_INET6: u8 = 10;
pub(super) const IPPROTO_TCP: u8 = 6;
/// Request attribute carrying the filter program.
pub(super) const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Answer attribute carrying `struct tcp_info`; also the bit `1 << (INET_DIAG_INFO - 1)` of
/// `idiag_ext` that asks for it.
pub(super) const INET_DIAG_INFO: u16 = 2;
/// `struct inet_diag_bc_op` code: compare against a `struct inet_diag_hostcond`.
pub(super) const INET_DIAG_BC_S_COND: u8 = 7;
/// `sizeof(struct inet_diag_msg)`.
pub(super) const INET_DIAG_MSG_LEN: usize = 72;
/// `sizeof(struct inet_diag_req_v2)`.
pub(super) const INET_DIAG_REQ_V2_LEN: usize = 56;
/// `sizeof(struct inet_diag_sockid)`.
pub(super) const INET_DIAG_SOCKID_LEN: usize = 48;
/// `nla_type` bits that are flags (`NLA_F_NESTED | NLA_F_NET_BYTEORDER`), not the type.
pub(super) const NLA_TYPE_MASK: u16 = 0x3fff;
/// Length of the port program, [`port_filter_bytecode`].
pub(super) const PORT_BYTECODE_LEN: usize = 16;

// --- TCP states ----------------------------------------------------------------------------

/// TCP states as the kernel numbers them (`TCP_ESTABLISHED = 1` … `TCP_NEW_SYN_RECV = 12`,
/// include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1).
    Established = 1,
    /// `TCP_SYN_SENT` (2).
    SynSent = 2,
    /// `TCP_SYN_RECV` (3). sock_diag also reports request sockets (`TCP_NEW_SYN_RECV`,
    /// half-open connections waiting for the final ACK) with this state.
    SynRecv = 3,
    /// `TCP_FIN_WAIT1` (4).
    FinWait1 = 4,
    /// `TCP_FIN_WAIT2` (5).
    FinWait2 = 5,
    /// `TCP_TIME_WAIT` (6).
    TimeWait = 6,
    /// `TCP_CLOSE` (7).
    Close = 7,
    /// `TCP_CLOSE_WAIT` (8).
    CloseWait = 8,
    /// `TCP_LAST_ACK` (9).
    LastAck = 9,
    /// `TCP_LISTEN` (10).
    Listen = 10,
    /// `TCP_CLOSING` (11).
    Closing = 11,
    /// `TCP_NEW_SYN_RECV` (12): a request socket. sock_diag never reports this number (it
    /// says [`TcpState::SynRecv`]); it exists for completeness of the numbering.
    NewSynRecv = 12,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The kernel's number for the state.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// The name `ss` prints for the state (`"ESTAB"`, `"LISTEN"`, `"CLOSE-WAIT"`, …;
    /// `TCP_CLOSE` is `"UNCONN"` as in `ss`, and `TCP_NEW_SYN_RECV`, which `ss` never sees,
    /// is `"NEW-SYN-RECV"`).
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW-SYN-RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A number that is not a TCP state (0, or above 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a TCP state number")]
pub struct UnknownTcpState(pub u8);

impl TryFrom<u8> for TcpState {
    type Error = UnknownTcpState;

    fn try_from(n: u8) -> Result<Self, UnknownTcpState> {
        match n {
            1..=12 => Ok(TcpState::ALL[usize::from(n - 1)]),
            _ => Err(UnknownTcpState(n)),
        }
    }
}

/// A set of TCP states, as the `idiag_states` bitmask of a dump request
/// (bit `1 << state number`).
///
/// Asking for [`TcpState::SynRecv`] also returns request sockets (the kernel adds
/// `TCP_NEW_SYN_RECV` itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStates(u32);

impl TcpStates {
    /// No state.
    pub const NONE: TcpStates = TcpStates(0);
    /// Every state (bits 1 to 12).
    pub const ALL: TcpStates = TcpStates(0x1ffe);
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: TcpStates = TcpStates::of(TcpState::Established);
    /// `TCP_SYN_SENT`.
    pub const SYN_SENT: TcpStates = TcpStates::of(TcpState::SynSent);
    /// `TCP_SYN_RECV` (and, implicitly, request sockets).
    pub const SYN_RECV: TcpStates = TcpStates::of(TcpState::SynRecv);
    /// `TCP_FIN_WAIT1`.
    pub const FIN_WAIT1: TcpStates = TcpStates::of(TcpState::FinWait1);
    /// `TCP_FIN_WAIT2`.
    pub const FIN_WAIT2: TcpStates = TcpStates::of(TcpState::FinWait2);
    /// `TCP_TIME_WAIT`.
    pub const TIME_WAIT: TcpStates = TcpStates::of(TcpState::TimeWait);
    /// `TCP_CLOSE`.
    pub const CLOSE: TcpStates = TcpStates::of(TcpState::Close);
    /// `TCP_CLOSE_WAIT`.
    pub const CLOSE_WAIT: TcpStates = TcpStates::of(TcpState::CloseWait);
    /// `TCP_LAST_ACK`.
    pub const LAST_ACK: TcpStates = TcpStates::of(TcpState::LastAck);
    /// `TCP_LISTEN`.
    pub const LISTEN: TcpStates = TcpStates::of(TcpState::Listen);
    /// `TCP_CLOSING`.
    pub const CLOSING: TcpStates = TcpStates::of(TcpState::Closing);
    /// `TCP_NEW_SYN_RECV`.
    pub const NEW_SYN_RECV: TcpStates = TcpStates::of(TcpState::NewSynRecv);
    /// Every state but `LISTEN`: the connections of a port, without its listener.
    pub const CONNECTIONS: TcpStates = TcpStates(Self::ALL.0 & !Self::LISTEN.0);

    /// The set holding exactly `state`.
    pub const fn of(state: TcpState) -> TcpStates {
        TcpStates(1 << state as u32)
    }

    /// This set plus `state`.
    #[must_use]
    pub const fn with(self, state: TcpState) -> TcpStates {
        TcpStates(self.0 | 1 << state as u32)
    }

    /// The union of two sets.
    #[must_use]
    pub const fn union(self, other: TcpStates) -> TcpStates {
        TcpStates(self.0 | other.0)
    }

    /// Whether `state` is in the set.
    pub const fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << state as u32) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The bitmask as the kernel reads it (`idiag_states`).
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for TcpStates {
    type Output = TcpStates;
    fn bitor(self, rhs: TcpStates) -> TcpStates {
        self.union(rhs)
    }
}

impl BitOr<TcpState> for TcpStates {
    type Output = TcpStates;
    fn bitor(self, rhs: TcpState) -> TcpStates {
        self.with(rhs)
    }
}

impl From<TcpState> for TcpStates {
    fn from(state: TcpState) -> TcpStates {
        TcpStates::of(state)
    }
}

// --- Sockets -------------------------------------------------------------------------------

/// The exact identity of one TCP socket, as sock_diag reports it and as [`SockDiag::get`](super::SockDiag::get)
/// and [`SockDiag::destroy`](super::SockDiag::destroy) take it back.
///
/// Addresses are kept exactly as the kernel reports them: a socket of an `AF_INET6`
/// dual-stack listener that carries IPv4 traffic has IPv6 addresses of the form
/// `::ffff:a.b.c.d` here, not IPv4 ones (the kernel looks such a socket up by its
/// v4-mapped addresses, family `AF_INET6`). IPv6 addresses carry no flow info and a scope id
/// of 0; the bound interface is in `interface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// Local address and port (`idiag_src`, `idiag_sport`).
    pub local: SocketAddr,
    /// Remote address and port (`idiag_dst`, `idiag_dport`); unspecified address and port 0
    /// for a listener.
    pub remote: SocketAddr,
    /// The kernel's socket cookie (`idiag_cookie[1] << 32 | idiag_cookie[0]`): unique per
    /// socket since Linux 4.1, so it tells a socket from a later one that reuses the 4-tuple.
    /// [`SocketId::NO_COOKIE`] matches any socket with the 4-tuple.
    pub cookie: u64,
    /// Interface the socket is bound to (`SO_BINDTODEVICE`, `idiag_if`), 0 when none.
    pub interface: u32,
}

impl SocketId {
    /// The cookie value (`INET_DIAG_NOCOOKIE` in both halves) that makes the kernel skip the
    /// cookie check in [`SockDiag::get`](super::SockDiag::get) and [`SockDiag::destroy`](super::SockDiag::destroy).
    pub const NO_COOKIE: u64 = u64::MAX;

    /// Whether this is an `AF_INET6` socket.
    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

/// One TCP socket from a sock_diag answer.
#[derive(Clone, Debug)]
pub struct TcpSocket {
    /// The exact identity of the socket.
    pub id: SocketId,
    /// Its state.
    pub state: TcpState,
    /// For a listener: current accept-queue length; otherwise bytes received but not read by
    /// the application. 0 for `TIME-WAIT` and request sockets.
    pub recv_queue: u32,
    /// For a listener: the accept-queue limit (backlog); otherwise bytes written but not yet
    /// acknowledged (incl. not yet sent). 0 for `TIME-WAIT` and request sockets.
    pub send_queue: u32,
    /// Inode of the socket's file; 0 when no file holds the socket (still in an accept queue,
    /// orphaned after close, `TIME-WAIT`, request socket).
    pub inode: u64,
    /// Owner uid (`sock_i_uid`, mapped into the caller's user namespace); 0 for `TIME-WAIT` and
    /// request sockets.
    pub uid: u32,
    /// `TCP_INFO`; `None` for `TIME-WAIT` and request sockets, for which the kernel sends none.
    pub info: Option<TcpInfo>,
}

/// The subset of `struct tcp_info` (linux/tcp.h) the drain uses.
///
/// The kernel sends its whole `struct tcp_info`, which grew over time; a field beyond the end
/// of what the kernel sent is 0. First kernel with each field: `bytes_acked`,
/// `bytes_received`: 4.1; `segs_out`, `segs_in`: 4.2; `notsent_bytes`, `data_segs_in`,
/// `data_segs_out`: 4.6; `bytes_sent`: 4.19; everything else predates sock_diag.
/// `last_ack_sent_ms` is always 0 (the kernel does not record it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state`: the kernel's state number.
    pub state: u8,
    /// `tcpi_retransmits`: consecutive retransmissions of the current segment.
    pub retransmits: u8,
    /// `tcpi_rto`: retransmission timeout, µs.
    pub rto_us: u32,
    /// `tcpi_unacked`: segments sent and not yet acknowledged (for a listener: accept-queue
    /// length).
    pub unacked: u32,
    /// `tcpi_last_data_sent`: ms since data was last sent (the kernel also sets the send
    /// timestamp when the connection is established).
    pub last_data_sent_ms: u32,
    /// `tcpi_last_ack_sent`: always 0.
    pub last_ack_sent_ms: u32,
    /// `tcpi_last_data_recv`: ms since data was last received.
    pub last_data_recv_ms: u32,
    /// `tcpi_last_ack_recv`: ms since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// `tcpi_rtt`: smoothed round-trip time, µs.
    pub rtt_us: u32,
    /// `tcpi_bytes_acked` (RFC 4898 `tcpEStatsAppHCThruOctetsAcked`), 4.1+.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received` (RFC 4898 `tcpEStatsAppHCThruOctetsReceived`), 4.1+.
    pub bytes_received: u64,
    /// `tcpi_segs_out`: segments sent, 4.2+.
    pub segs_out: u32,
    /// `tcpi_segs_in`: segments received, 4.2+.
    pub segs_in: u32,
    /// `tcpi_notsent_bytes`: bytes written and not yet sent, 4.6+.
    pub notsent_bytes: u32,
    /// `tcpi_bytes_sent` (RFC 4898 `tcpEStatsPerfHCDataOctetsOut`, incl. retransmissions),
    /// 4.19+.
    pub bytes_sent: u64,
    /// `tcpi_data_segs_in`: segments received carrying data, 4.6+.
    pub data_segs_in: u32,
    /// `tcpi_data_segs_out`: segments sent carrying data, 4.6+.
    pub data_segs_out: u32,
}

impl TcpInfo {
    /// Reads the fields from the payload of an `INET_DIAG_INFO` attribute (a host-endian
    /// `struct tcp_info` of whatever length the kernel sent). Fields that lie, wholly or in
    /// part, beyond the end of `bytes` are 0; this never fails.
    pub fn from_kernel_bytes(bytes: &[u8]) -> TcpInfo {
        let u8_at = |off: usize| bytes.get(off).copied().unwrap_or(0);
        let u32_at = |off: usize| read_array(bytes, off).map_or(0, u32::from_ne_bytes);
        let u64_at = |off: usize| read_array(bytes, off).map_or(0, u64::from_ne_bytes);
        // Offsets in struct tcp_info (checked with offsetof() against linux/tcp.h).
        TcpInfo {
            state: u8_at(0),
            retransmits: u8_at(2),
            rto_us: u32_at(8),
            unacked: u32_at(24),
            last_data_sent_ms: u32_at(44),
            last_ack_sent_ms: u32_at(48),
            last_data_recv_ms: u32_at(52),
            last_ack_recv_ms: u32_at(56),
            rtt_us: u32_at(68),
            bytes_acked: u64_at(120),
            bytes_received: u64_at(128),
            segs_out: u32_at(136),
            segs_in: u32_at(140),
            notsent_bytes: u32_at(144),
            data_segs_in: u32_at(152),
            data_segs_out: u32_at(156),
            bytes_sent: u64_at(200),
        }
    }
}

/// What one reply message means to the exchange in progress.
pub enum Reply<'a> {
    /// A `SOCK_DIAG_BY_FAMILY` message: an `inet_diag_msg` and its attributes.
    Diag(&'a [u8]),
    /// `NLMSG_DONE` with its status (0, or a negative errno).
    Done(i32),
    /// `NLMSG_ERROR` with its error (0 is an acknowledgement, else a negative errno).
    Error(i32),
}

// --- Serialisation -------------------------------------------------------------------------

/// The filter program for "local port == `port`", byte for byte what iproute2's `ss` sends
/// for `sport = :PORT`:
///
/// ```text
/// op   { code: INET_DIAG_BC_S_COND (7), yes: 16, no: 20 }            4 bytes
/// cond { family: AF_UNSPEC, prefix_len: 0, pad, port: i32 = PORT }  8 bytes
/// 4 bytes of room for an IPv4 address (ss reserves it; unused with AF_UNSPEC)
/// ```
///
/// `yes`/`no` are jumps relative to the op. `inet_diag_bc_run` accepts a socket when the
/// program ends exactly at its last byte and rejects it when a jump lands beyond: a match
/// jumps 16 (the end: accept), a mismatch 20 (4 past the end: reject). With `AF_UNSPEC` and
/// prefix 0 the condition tests the port only; the kernel compares it with the socket's local
/// port in host order (`inet_num`), for every state including listeners, `TIME-WAIT` and
/// request sockets. `inet_diag_bc_audit` accepts it: `yes`, `no` >= 12 (op + hostcond),
/// <= length + 4, multiples of 4.
pub fn port_filter_bytecode(port: u16) -> [u8; PORT_BYTECODE_LEN] {
    let mut bc = [0u8; PORT_BYTECODE_LEN];
    bc[0] = INET_DIAG_BC_S_COND;
    bc[1] = 16; // yes: to the end -> accept
    bc[2..4].copy_from_slice(&20u16.to_ne_bytes()); // no: past the end -> reject
    bc[4] = 0; // hostcond.family = AF_UNSPEC
    bc[5] = 0; // hostcond.prefix_len
    bc[8..12].copy_from_slice(&i32::from(port).to_ne_bytes()); // hostcond.port
    bc
}

/// `(family, struct inet_diag_sockid)` for an exact request about `id`.
pub(super) fn encode_sockid(id: &SocketId) -> Result<(u8, [u8; INET_DIAG_SOCKID_LEN])> {
    let mut s = [0u8; INET_DIAG_SOCKID_LEN];
    s[0..2].copy_from_slice(&id.local.port().to_be_bytes());
    s[2..4].copy_from_slice(&id.remote.port().to_be_bytes());
    let family = match (id.local, id.remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => {
            s[4..8].copy_from_slice(&l.ip().octets());
            s[20..24].copy_from_slice(&r.ip().octets());
            AF_INET
        }
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            s[4..20].copy_from_slice(&l.ip().octets());
            s[20..36].copy_from_slice(&r.ip().octets());
            AF_INET6
        }
        _ => {
            return Err(SockDiagError::InvalidId {
                what: "local and remote addresses are of different families",
            });
        }
    };
    s[36..40].copy_from_slice(&id.interface.to_ne_bytes());
    // The kernel compares cookie[0] with the low and cookie[1] with the high 32 bits.
    s[40..44].copy_from_slice(&(id.cookie as u32).to_ne_bytes());
    s[44..48].copy_from_slice(&((id.cookie >> 32) as u32).to_ne_bytes());
    Ok((family, s))
}

/// Writes `nlmsghdr + inet_diag_req_v2 [+ INET_DIAG_REQ_BYTECODE attribute]` into `out`.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_request(
    out: &mut Vec<u8>,
    nlmsg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    states: TcpStates,
    sockid: &[u8; INET_DIAG_SOCKID_LEN],
    bytecode: Option<&[u8]>,
) {
    let attr_len = bytecode.map_or(0, |bc| align4(4 + bc.len()));
    let total = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN + attr_len;
    out.clear();
    // struct nlmsghdr
    out.extend_from_slice(&(total as u32).to_ne_bytes());
    out.extend_from_slice(&nlmsg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
                                                // struct inet_diag_req_v2
    out.push(family); // sdiag_family
    out.push(IPPROTO_TCP); // sdiag_protocol
    out.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext: ask for TCP_INFO
    out.push(0); // pad
    out.extend_from_slice(&states.bits().to_ne_bytes()); // idiag_states
    out.extend_from_slice(sockid); // id
                                   // struct rtattr + program
    if let Some(bc) = bytecode {
        out.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        out.extend_from_slice(bc);
        out.resize(total, 0);
    }
}

// --- Parsing -------------------------------------------------------------------------------

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `N` bytes at `off`, or `None` when `bytes` is too short.
fn read_array<const N: usize>(bytes: &[u8], off: usize) -> Option<[u8; N]> {
    bytes.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn read_exact<const N: usize>(bytes: &[u8], off: usize, what: &'static str) -> Result<[u8; N]> {
    read_array(bytes, off).ok_or(SockDiagError::Truncated {
        what,
        need: off.saturating_add(N),
        have: bytes.len(),
    })
}

fn read_u32(bytes: &[u8], off: usize, what: &'static str) -> Result<u32> {
    read_exact(bytes, off, what).map(u32::from_ne_bytes)
}

fn read_i32(bytes: &[u8], off: usize, what: &'static str) -> Result<i32> {
    read_exact(bytes, off, what).map(i32::from_ne_bytes)
}

fn read_u16(bytes: &[u8], off: usize, what: &'static str) -> Result<u16> {
    read_exact(bytes, off, what).map(u16::from_ne_bytes)
}

/// One netlink message of a datagram.
#[derive(Debug)]
pub struct NlMessage<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_seq`: which request it answers.
    pub seq: u32,
    /// What follows the header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

/// The netlink messages of one datagram. Yields an error (and then stops) on a header that
/// does not fit.
pub struct NlMessages<'a> {
    rest: &'a [u8],
}

impl<'a> NlMessages<'a> {
    pub fn new(datagram: &'a [u8]) -> Self {
        NlMessages { rest: datagram }
    }

    fn next_message(&mut self) -> Result<NlMessage<'a>> {
        let rest = self.rest;
        let len = read_u32(rest, 0, "nlmsghdr")? as usize;
        let ty = read_u16(rest, 4, "nlmsghdr")?;
        let seq = read_u32(rest, 8, "nlmsghdr")?;
        read_u32(rest, 12, "nlmsghdr")?; // nlmsg_pid
        if len < NLMSG_HDRLEN {
            return Err(SockDiagError::Malformed {
                what: "nlmsg_len smaller than the netlink header",
                value: len as u64,
            });
        }
        let payload = rest
            .get(NLMSG_HDRLEN..len)
            .ok_or(SockDiagError::Truncated {
                what: "netlink message",
                need: len,
                have: rest.len(),
            })?;
        self.rest = rest.get(align4(len)..).unwrap_or(&[]);
        Ok(NlMessage { ty, seq, payload })
    }
}

impl<'a> Iterator for NlMessages<'a> {
    type Item = Result<NlMessage<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.next_message();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// What message `msg` of an answer means; `None` for `NLMSG_NOOP`, which is skipped.
pub fn reply<'a>(msg: &NlMessage<'a>) -> Result<Option<Reply<'a>>> {
    Ok(Some(match msg.ty {
        NLMSG_NOOP => return Ok(None),
        NLMSG_ERROR => Reply::Error(read_i32(msg.payload, 0, "nlmsgerr")?),
        // NLMSG_DONE carries the dump's status; very old kernels sent none.
        NLMSG_DONE => Reply::Done(read_array(msg.payload, 0).map_or(0, i32::from_ne_bytes)),
        SOCK_DIAG_BY_FAMILY => Reply::Diag(msg.payload),
        NLMSG_OVERRUN => {
            return Err(SockDiagError::Malformed {
                what: "NLMSG_OVERRUN",
                value: u64::from(msg.ty),
            });
        }
        other => {
            return Err(SockDiagError::Malformed {
                what: "unexpected netlink message type",
                value: u64::from(other),
            });
        }
    }))
}

/// Parses the payload of a `SOCK_DIAG_BY_FAMILY` answer: `struct inet_diag_msg` followed by
/// attributes.
pub fn parse_diag_msg(p: &[u8]) -> Result<TcpSocket> {
    const WHAT: &str = "inet_diag_msg";
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(SockDiagError::Truncated {
            what: WHAT,
            need: INET_DIAG_MSG_LEN,
            have: p.len(),
        });
    }
    let family = p[0];
    let state = TcpState::try_from(p[1]).map_err(|e| SockDiagError::Malformed {
        what: "idiag_state is not a TCP state",
        value: u64::from(e.0),
    })?;
    // struct inet_diag_sockid at offset 4
    let sport = u16::from_be_bytes(read_exact(p, 4, WHAT)?);
    let dport = u16::from_be_bytes(read_exact(p, 6, WHAT)?);
    let (local, remote) = match family {
        AF_INET => (
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(read_exact::<4>(p, 8, WHAT)?),
                sport,
            )),
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(read_exact::<4>(p, 24, WHAT)?),
                dport,
            )),
        ),
        AF_INET6 => (
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(read_exact::<16>(p, 8, WHAT)?),
                sport,
                0,
                0,
            )),
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(read_exact::<16>(p, 24, WHAT)?),
                dport,
                0,
                0,
            )),
        ),
        other => {
            return Err(SockDiagError::Malformed {
                what: "idiag_family is neither AF_INET nor AF_INET6",
                value: u64::from(other),
            });
        }
    };
    let interface = read_u32(p, 40, WHAT)?;
    let cookie = u64::from(read_u32(p, 48, WHAT)?) << 32 | u64::from(read_u32(p, 44, WHAT)?);
    // idiag_expires at 52 is not used.
    let recv_queue = read_u32(p, 56, WHAT)?;
    let send_queue = read_u32(p, 60, WHAT)?;
    let uid = read_u32(p, 64, WHAT)?;
    let inode = u64::from(read_u32(p, 68, WHAT)?);

    let mut info = None;
    let mut attrs = p.get(align4(INET_DIAG_MSG_LEN)..).unwrap_or(&[]);
    while !attrs.is_empty() {
        const ATTR: &str = "netlink attribute header";
        let len = usize::from(read_u16(attrs, 0, ATTR)?);
        let ty = read_u16(attrs, 2, ATTR)? & NLA_TYPE_MASK;
        if len < 4 {
            return Err(SockDiagError::Malformed {
                what: "attribute length smaller than its header",
                value: len as u64,
            });
        }
        let payload = attrs.get(4..len).ok_or(SockDiagError::Truncated {
            what: "netlink attribute",
            need: len,
            have: attrs.len(),
        })?;
        if ty == INET_DIAG_INFO {
            info = Some(TcpInfo::from_kernel_bytes(payload));
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }

    Ok(TcpSocket {
        id: SocketId {
            local,
            remote,
            cookie,
            interface,
        },
        state,
        recv_queue,
        send_queue,
        inode,
        uid,
        info,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::IpAddr;

    /// Builds an `inet_diag_msg` as the kernel would.
    #[allow(clippy::too_many_arguments)]
    fn diag_msg(
        family: u8,
        state: u8,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
        cookie: u64,
        queues: (u32, u32),
        uid: u32,
        inode: u32,
    ) -> Vec<u8> {
        let mut m = vec![family, state, 0, 0];
        m.extend_from_slice(&local.1.to_be_bytes());
        m.extend_from_slice(&remote.1.to_be_bytes());
        for ip in [local.0, remote.0] {
            let mut a = [0u8; 16];
            match ip {
                IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
            }
            m.extend_from_slice(&a);
        }
        m.extend_from_slice(&3u32.to_ne_bytes()); // idiag_if
        m.extend_from_slice(&(cookie as u32).to_ne_bytes());
        m.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        m.extend_from_slice(&1234u32.to_ne_bytes()); // expires
        m.extend_from_slice(&queues.0.to_ne_bytes());
        m.extend_from_slice(&queues.1.to_ne_bytes());
        m.extend_from_slice(&uid.to_ne_bytes());
        m.extend_from_slice(&inode.to_ne_bytes());
        assert_eq!(m.len(), INET_DIAG_MSG_LEN);
        m
    }

    fn push_attr(m: &mut Vec<u8>, ty: u16, payload: &[u8]) {
        m.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
    }

    /// A `struct tcp_info` of `len` bytes with recognisable values in the used fields.
    fn tcp_info_bytes(len: usize) -> Vec<u8> {
        let mut t = vec![0u8; 232];
        t[0] = 1;
        t[2] = 2;
        let mut put32 = |off: usize, v: u32| t[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        put32(8, 204_000);
        put32(24, 3);
        put32(44, 2360);
        put32(48, 0);
        put32(52, 2060);
        put32(56, 2059);
        put32(68, 51);
        put32(136, 7);
        put32(140, 6);
        put32(144, 5);
        put32(152, 1);
        put32(156, 2);
        let mut put64 = |off: usize, v: u64| t[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        put64(120, 19);
        put64(128, 18);
        put64(200, 20);
        t.truncate(len);
        t
    }

    fn expected_full_info() -> TcpInfo {
        TcpInfo {
            state: 1,
            retransmits: 2,
            rto_us: 204_000,
            unacked: 3,
            last_data_sent_ms: 2360,
            last_ack_sent_ms: 0,
            last_data_recv_ms: 2060,
            last_ack_recv_ms: 2059,
            rtt_us: 51,
            bytes_acked: 19,
            bytes_received: 18,
            segs_out: 7,
            segs_in: 6,
            notsent_bytes: 5,
            bytes_sent: 20,
            data_segs_in: 1,
            data_segs_out: 2,
        }
    }

    #[test]
    fn parses_ipv4_message_with_tcp_info() {
        let cookie = 0x0000_0001_0000_2a2b_u64;
        let mut m = diag_msg(
            AF_INET,
            1,
            (Ipv4Addr::new(127, 0, 0, 1).into(), 8080),
            (Ipv4Addr::new(10, 1, 2, 3).into(), 40000),
            cookie,
            (18, 0),
            1000,
            4242,
        );
        push_attr(&mut m, 8, &[0]); // INET_DIAG_SHUTDOWN, ignored
        push_attr(&mut m, INET_DIAG_INFO, &tcp_info_bytes(232));
        let s = parse_diag_msg(&m).unwrap();
        assert_eq!(s.id.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.id.remote, "10.1.2.3:40000".parse().unwrap());
        assert_eq!(s.id.cookie, cookie);
        assert_eq!(s.id.interface, 3);
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(
            (s.recv_queue, s.send_queue, s.uid, s.inode),
            (18, 0, 1000, 4242)
        );
        assert_eq!(s.info, Some(expected_full_info()));
    }

    #[test]
    fn parses_v4_mapped_ipv6_message_as_ipv6() {
        let local: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        let m = diag_msg(
            AF_INET6,
            10,
            (local.into(), 443),
            (Ipv6Addr::UNSPECIFIED.into(), 0),
            7,
            (2, 4096),
            0,
            1,
        );
        let s = parse_diag_msg(&m).unwrap();
        assert_eq!(s.id.local, SocketAddr::new(local.into(), 443));
        assert!(s.id.is_ipv6());
        assert_eq!(s.state, TcpState::Listen);
        assert_eq!((s.recv_queue, s.send_queue), (2, 4096));
        assert_eq!(s.info, None);
    }

    #[test]
    fn short_tcp_info_leaves_later_fields_zero() {
        // A 4.1-era struct: ends after tcpi_bytes_received (136 bytes); and one cut inside a
        // field (bytes_received half present) to check partial fields read as 0.
        let info = TcpInfo::from_kernel_bytes(&tcp_info_bytes(136));
        let mut want = expected_full_info();
        (want.segs_out, want.segs_in, want.notsent_bytes) = (0, 0, 0);
        (want.data_segs_in, want.data_segs_out, want.bytes_sent) = (0, 0, 0);
        assert_eq!(info, want);

        let info = TcpInfo::from_kernel_bytes(&tcp_info_bytes(132));
        assert_eq!(info.bytes_acked, 19);
        assert_eq!(info.bytes_received, 0);

        let mut m = diag_msg(
            AF_INET,
            1,
            (Ipv4Addr::LOCALHOST.into(), 1),
            (Ipv4Addr::LOCALHOST.into(), 2),
            1,
            (0, 0),
            0,
            0,
        );
        push_attr(&mut m, INET_DIAG_INFO, &tcp_info_bytes(104));
        let info = parse_diag_msg(&m).unwrap().info.unwrap();
        assert_eq!(info.rtt_us, 51);
        assert_eq!(
            (info.bytes_acked, info.bytes_received, info.bytes_sent),
            (0, 0, 0)
        );
        assert_eq!(TcpInfo::from_kernel_bytes(&[]), TcpInfo::default());
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error() {
        let good = {
            let mut m = diag_msg(
                AF_INET,
                1,
                (Ipv4Addr::LOCALHOST.into(), 1),
                (Ipv4Addr::LOCALHOST.into(), 2),
                1,
                (0, 0),
                0,
                0,
            );
            push_attr(&mut m, INET_DIAG_INFO, &tcp_info_bytes(232));
            m
        };
        assert!(parse_diag_msg(&good).is_ok());
        // Every cut inside the fixed part or the attribute must be an error, never a panic.
        // (A cut right after the fixed part is a valid message without attributes.)
        assert!(parse_diag_msg(&good[..INET_DIAG_MSG_LEN])
            .unwrap()
            .info
            .is_none());
        for cut in (0..good.len()).filter(|&c| c != INET_DIAG_MSG_LEN) {
            let r = parse_diag_msg(&good[..cut]);
            assert!(r.is_err(), "cut at {cut} parsed");
        }
        // Attribute length below its header, or beyond the message.
        let mut bad = good[..INET_DIAG_MSG_LEN].to_vec();
        bad.extend_from_slice(&2u16.to_ne_bytes());
        bad.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        assert!(matches!(
            parse_diag_msg(&bad),
            Err(SockDiagError::Malformed { .. })
        ));
        let mut bad = good[..INET_DIAG_MSG_LEN].to_vec();
        bad.extend_from_slice(&500u16.to_ne_bytes());
        bad.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
        assert!(matches!(
            parse_diag_msg(&bad),
            Err(SockDiagError::Truncated { .. })
        ));
        // Unknown family, unknown state.
        let mut bad = good.clone();
        bad[0] = 1;
        assert!(matches!(
            parse_diag_msg(&bad),
            Err(SockDiagError::Malformed { .. })
        ));
        let mut bad = good.clone();
        bad[1] = 0;
        assert!(matches!(
            parse_diag_msg(&bad),
            Err(SockDiagError::Malformed { .. })
        ));
        let mut bad = good;
        bad[1] = 13;
        assert!(matches!(
            parse_diag_msg(&bad),
            Err(SockDiagError::Malformed { .. })
        ));
    }

    fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    #[test]
    fn netlink_message_framing() {
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, 5, &[1, 2, 3]);
        d.extend(nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes()));
        let msgs: Vec<_> = NlMessages::new(&d).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            (msgs[0].ty, msgs[0].seq, msgs[0].payload),
            (SOCK_DIAG_BY_FAMILY, 5, &[1, 2, 3][..])
        );
        assert_eq!((msgs[1].ty, msgs[1].payload.len()), (NLMSG_DONE, 4));

        // Every truncation of the datagram that is not at a message boundary is an error.
        let first_len = align4(NLMSG_HDRLEN + 3);
        assert_eq!(NlMessages::new(&d[..first_len]).count(), 1);
        // (Nor is the first message without its trailing padding: the last message of a
        // datagram need not be padded.)
        assert_eq!(NlMessages::new(&d[..NLMSG_HDRLEN + 3]).count(), 1);
        for cut in (1..d.len()).filter(|&c| c != first_len && c != NLMSG_HDRLEN + 3) {
            let results: Vec<_> = NlMessages::new(&d[..cut]).collect();
            assert!(results.iter().any(Result::is_err), "cut at {cut}");
        }
        // nlmsg_len below the header size.
        let mut bad = d.clone();
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        let first = NlMessages::new(&bad).next().unwrap();
        assert!(matches!(first, Err(SockDiagError::Malformed { .. })));
        // nlmsg_len beyond the datagram.
        let mut bad = d;
        bad[0..4].copy_from_slice(&4000u32.to_ne_bytes());
        let first = NlMessages::new(&bad).next().unwrap();
        assert!(matches!(first, Err(SockDiagError::Truncated { .. })));
    }

    #[test]
    fn port_bytecode_matches_what_ss_builds() {
        // Captured with `strace -e trace=sendmsg -e write=3 ss -Htn '( sport = :8080 )'`
        // (iproute2 6.1, x86_64): the INET_DIAG_REQ_BYTECODE attribute is 14 00 01 00 and then
        // these 16 bytes.
        let ss_8080: [u8; 16] = [
            0x07, 0x10, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x90, 0x1f, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00,
        ];
        let bc = port_filter_bytecode(8080);
        if cfg!(target_endian = "little") {
            assert_eq!(bc, ss_8080);
        }
        // Endian-neutral description of the same program.
        assert_eq!(&bc[..2], &[INET_DIAG_BC_S_COND, 16]);
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 20);
        assert_eq!(i32::from_ne_bytes([bc[8], bc[9], bc[10], bc[11]]), 8080);

        // The whole dump request: 16 + 56 + 4 + 16 = 92 bytes, as ss sends.
        let mut req = Vec::new();
        build_request(
            &mut req,
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            9,
            AF_INET,
            TcpStates::ESTABLISHED,
            &[0; INET_DIAG_SOCKID_LEN],
            Some(&bc),
        );
        assert_eq!(req.len(), 92);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 92);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(&req[16..20], &[AF_INET, IPPROTO_TCP, 2, 0]);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 1);
        assert_eq!(u16::from_ne_bytes([req[72], req[73]]), 20); // rta_len
        assert_eq!(
            u16::from_ne_bytes([req[74], req[75]]),
            INET_DIAG_REQ_BYTECODE
        ); // rta_type
        assert_eq!(&req[76..], &bc);
    }

    /// `inet_diag_bc_run` from net/ipv4/inet_diag.c, reduced to the ops used here.
    pub(in crate::inventory::sock_diag) fn kernel_bc_run(bc: &[u8], sport: u16) -> bool {
        let mut off = 0usize;
        let mut len = bc.len() as isize;
        while len > 0 {
            let (code, yes, no) = (
                bc[off],
                bc[off + 1],
                u16::from_ne_bytes([bc[off + 2], bc[off + 3]]),
            );
            let matched = match code {
                INET_DIAG_BC_S_COND => {
                    let family = bc[off + 4];
                    let port = i32::from_ne_bytes(bc[off + 8..off + 12].try_into().unwrap());
                    assert_eq!((family, bc[off + 5]), (0, 0));
                    port == -1 || port == i32::from(sport)
                }
                11 => u16::from_ne_bytes([bc[off + 6], bc[off + 7]]) == sport, // S_EQ
                _ => panic!("op {code} not modelled"),
            };
            let step = if matched {
                usize::from(yes)
            } else {
                usize::from(no)
            };
            off += step;
            len -= step as isize;
        }
        len == 0
    }

    #[test]
    fn port_bytecode_accepts_only_its_port() {
        let bc = port_filter_bytecode(8080);
        assert!(kernel_bc_run(&bc, 8080));
        for other in [0, 1, 8079, 8081, 9000, 65535] {
            assert!(!kernel_bc_run(&bc, other), "port {other} accepted");
        }
        assert!(kernel_bc_run(&port_filter_bytecode(65535), 65535));
    }

    #[test]
    fn sockid_encoding() {
        let id = SocketId {
            local: "[::ffff:127.0.0.1]:8080".parse().unwrap(),
            remote: "[::ffff:127.0.0.2]:50000".parse().unwrap(),
            cookie: 0x1122_3344_5566_7788,
            interface: 2,
        };
        let (family, s) = encode_sockid(&id).unwrap();
        assert_eq!(family, AF_INET6);
        assert_eq!(&s[0..4], &[0x1f, 0x90, 0xc3, 0x50]);
        assert_eq!(
            &s[4..20],
            &"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(u32::from_ne_bytes(s[36..40].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_ne_bytes(s[40..44].try_into().unwrap()),
            0x5566_7788
        );
        assert_eq!(
            u32::from_ne_bytes(s[44..48].try_into().unwrap()),
            0x1122_3344
        );

        let mixed = SocketId {
            remote: "1.2.3.4:5".parse().unwrap(),
            ..id
        };
        assert!(matches!(
            encode_sockid(&mixed),
            Err(SockDiagError::InvalidId { .. })
        ));
    }

    #[test]
    fn states_and_names() {
        for (i, s) in TcpState::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.number()), i + 1);
            assert_eq!(TcpState::try_from(s.number()), Ok(*s));
        }
        assert_eq!(TcpState::try_from(0), Err(UnknownTcpState(0)));
        assert_eq!(TcpState::try_from(13), Err(UnknownTcpState(13)));
        assert_eq!(TcpState::Established.name(), "ESTAB");
        assert_eq!(TcpState::CloseWait.to_string(), "CLOSE-WAIT");
        assert_eq!(TcpState::Listen.name(), "LISTEN");
        assert_eq!(TcpStates::LISTEN.bits(), 1 << 10);
        assert_eq!(TcpStates::ALL.bits(), 0x1ffe);
        let s = TcpStates::LISTEN.with(TcpState::Established);
        assert!(s.contains(TcpState::Listen) && s.contains(TcpState::Established));
        assert!(!s.contains(TcpState::TimeWait));
        assert_eq!(s, TcpStates::LISTEN | TcpStates::ESTABLISHED);
        assert!(TcpState::ALL.iter().all(|st| TcpStates::ALL.contains(*st)));
        assert!(!TcpStates::CONNECTIONS.contains(TcpState::Listen));
        assert!(TcpStates::NONE.is_empty());
    }
}

//! The contract between the eBPF programs (sk_lookup steering, sk_msg `Connection: close`)
//! and their userspace loaders.
//!
//! Both sides name the same maps and globals; keeping the names and sizes in one
//! `no_std` crate means a change is seen by both sides instead of failing in the kernel.
#![no_std]
#![forbid(unsafe_code)]

/// Name of the sk_lookup program in the object file.
pub const PROGRAM_NAME: &str = "drain_steer";

/// Name of the read-only global (u16, host byte order) holding the port under drain.
/// One program instance is loaded per drained port, so the port is a load-time constant.
pub const PORT_GLOBAL: &str = "DRAIN_PORT";

/// Name of the SOCKHASH `slot (u32) -> listening socket` holding the draining listeners
/// of the port.
///
/// The kernel removes a socket from every SOCKHASH when the socket is closed, so an
/// entry cannot outlive the listener it refers to: the refusal is keyed on these entries.
pub const LISTENERS_MAP: &str = "DRAIN_LISTENERS";

/// Name of the SOCKHASH `slot (u32) -> listening socket` holding the successors: the
/// listeners new connections are handed to while the port drains. Empty: refuse.
pub const SUCCESSORS_MAP: &str = "SUCCESSORS";

/// Name of the array `slot (u32) -> 1 | 0` saying whether the draining listener in the
/// same slot of [`LISTENERS_MAP`] is an IPv6 socket with `IPV6_V6ONLY` (the kernel does
/// not show that flag to the program). The loader writes a slot's flag before it puts
/// the socket into the slot.
pub const V6ONLY_MAP: &str = "DRAIN_V6ONLY";

/// Name of the per-CPU array counting what the program did, indexed by the `COUNT_*`
/// constants.
pub const COUNTS_MAP: &str = "COUNTS";

/// [`COUNTS_MAP`] index: new connections refused (no successor matched).
pub const COUNT_REFUSED: u32 = 0;

/// [`COUNTS_MAP`] index: new connections handed to a successor.
pub const COUNT_STEERED: u32 = 1;

/// How many listening sockets one drain can hold, and how many successors: an IPv4 and
/// an IPv6 listener, or every member of a SO_REUSEPORT group (one per worker, per
/// family: 128 covers 64 workers on both families). The program's cost does not grow
/// with it where it matters: a connection to a draining listener stops at the first
/// matching slot, and the successors are read up to the first empty one.
pub const MAX_LISTENERS_PER_PORT: u32 = 128;

/// The slots of [`LISTENERS_MAP`]: room for two full sets of listeners, so a drain that
/// takes over an earlier drain's pinned map puts its set in beside the old one before
/// it removes the old one (the listeners in both stay refused throughout).
pub const LISTENER_SLOTS: u32 = 2 * MAX_LISTENERS_PER_PORT;

/// Name of the sk_msg program that writes `Connection: close` into the head of the next
/// HTTP/1.x response on a connection being drained.
pub const CLOSE_PROGRAM_NAME: &str = "close_http";

/// Name of the SOCKHASH `socket cookie (u64) -> established socket` the sk_msg program is
/// attached to: the drain's connections whose next response it is to rewrite. Never
/// pinned: when the drain ends, the map goes and every socket in it is restored.
pub const CLOSE_SOCKETS_MAP: &str = "CLOSE_SOCKETS";

/// Name of the hash map `FlowKey -> u32` in which the sk_msg program marks the
/// connections it has rewritten a response of: it never touches them again, and the
/// loader takes them out of [`CLOSE_SOCKETS_MAP`].
pub const CLOSE_DONE_MAP: &str = "CLOSE_DONE";

/// How many connections one drain can have in [`CLOSE_SOCKETS_MAP`] at once.
pub const MAX_CLOSE_SOCKETS: u32 = 65536;

/// [`COUNTS_MAP`] index: responses that `Connection: close` was written into.
pub const COUNT_CLOSE_INJECTED: u32 = 2;

/// [`COUNTS_MAP`] index: websocket connections sent a close frame (1001, going away).
pub const COUNT_WEBSOCKET_CLOSED: u32 = 3;

/// The close frame the sk_msg program appends to a server's websocket message: final,
/// opcode close, unmasked, 2 bytes of payload, status 1001 ("going away").
pub const WEBSOCKET_GOING_AWAY: &[u8; 4] = &[0x88, 0x02, 0x03, 0xe9];

/// The header the sk_msg program inserts right after a response's status line.
pub const CONNECTION_CLOSE: &[u8; 19] = b"Connection: close\r\n";

/// A connection as the sk_msg program sees it (`struct sk_msg_md`): the key of
/// [`CLOSE_DONE_MAP`]. Addresses and the remote port are in network byte order as the
/// kernel gives them (the remote port in the upper 16 bits of its u32 on little-endian
/// hosts); the local port in host byte order. IPv4 addresses fill `*_ip[0]`; an IPv6
/// socket (v4-mapped included) fills all four words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    pub family: u32,
    pub remote_port: u32,
    pub local_port: u32,
    pub remote_ip: [u32; 4],
    pub local_ip: [u32; 4],
}

impl FlowKey {
    /// The key as the map stores it: its fields in order, as `u32` words (a plain array is
    /// a map key the loader can use without an `unsafe` marker).
    pub fn to_words(&self) -> [u32; 11] {
        let [r0, r1, r2, r3] = self.remote_ip;
        let [l0, l1, l2, l3] = self.local_ip;
        [
            self.family,
            self.remote_port,
            self.local_port,
            r0,
            r1,
            r2,
            r3,
            l0,
            l1,
            l2,
            l3,
        ]
    }
}

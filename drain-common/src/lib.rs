//! The contract between the eBPF programs (sk_lookup steering, sk_msg `Connection: close`)
//! and their userspace loaders, and the decisions both sides run.
//!
//! Both sides name the same maps and globals; keeping the names and sizes in one
//! `no_std` crate means a change is seen by both sides instead of failing in the kernel.
//! The code that decides whether the in-band close may add bytes to a server's output
//! ([`inband`], from [`boundary`], [`http1`] and [`websocket`]) lives here too, so that the kernel program
//! and the host's tests and fuzzer run exactly the same decisions.
#![no_std]
#![forbid(unsafe_code)]

pub mod boundary;
pub mod http1;
pub mod inband;
pub mod websocket;

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

/// Name of the one-entry array (u64) holding when the drain's steering ends: a
/// `CLOCK_BOOTTIME` instant in nanoseconds (what `bpf_ktime_get_boot_ns` reads), after
/// which the program steers and refuses nothing. A refusal outlives the process that set
/// it up (pinned, or held by a holder process) until the draining listeners close, and
/// this bounds it when they never do: a server that keeps running after a drain whose
/// `drainctl` was killed gets its connections again. 0: not set yet, no end.
pub const EXPIRY_MAP: &str = "DRAIN_EXPIRY";

/// Name of the per-CPU array counting what the program did, indexed by the `COUNT_*`
/// constants.
pub const COUNTS_MAP: &str = "COUNTS";

/// [`COUNTS_MAP`] index: new connections refused (no successor matched).
pub const COUNT_REFUSED: u32 = 0;

/// [`COUNTS_MAP`] index: new connections handed to a successor.
pub const COUNT_STEERED: u32 = 1;

/// How many listening sockets one drain can hold, and how many successors: an IPv4 and
/// an IPv6 listener, or every member of a SO_REUSEPORT group (one per worker, per
/// family: 128 covers 64 workers on both families).
pub const MAX_LISTENERS_PER_PORT: u32 = 128;

/// The most slots [`LISTENERS_MAP`] can have: room for two full sets of listeners, so a
/// drain that takes over an earlier drain's pinned map puts its set in beside the old
/// one before it removes the old one (the listeners in both stay refused throughout).
pub const LISTENER_SLOTS: u32 = 2 * MAX_LISTENERS_PER_PORT;

/// Name of the read-only global (u32) holding the slots [`LISTENERS_MAP`] and
/// [`V6ONLY_MAP`] were created with. Each instance is sized for its drain, because the
/// verifier walks the program's loop over the slots once per slot: loading a program
/// sized for [`LISTENER_SLOTS`] took 0.38 s of CPU, one sized for 32 slots a tenth of
/// that (measured on Linux 6.18). The verifier reads the value as a constant (a frozen
/// `.rodata` map, Linux 5.2+).
pub const LISTENER_SLOTS_GLOBAL: &str = "DRAIN_LISTENER_SLOTS";

/// Name of the read-only global (u32) holding the slots [`SUCCESSORS_MAP`] was created
/// with, at most [`MAX_LISTENERS_PER_PORT`]; see [`LISTENER_SLOTS_GLOBAL`].
pub const SUCCESSOR_SLOTS_GLOBAL: &str = "DRAIN_SUCCESSOR_SLOTS";

/// The fewest slots an instance is given for a set of listeners (draining or
/// successors): a successor started during the drain with a larger reuseport group than
/// the room gets connections on this many of its sockets.
pub const MIN_SLOTS: u32 = 16;

/// The slots an instance gets for a set of `listeners`: a power of two from
/// [`MIN_SLOTS`] to [`MAX_LISTENERS_PER_PORT`].
pub const fn slots_for(listeners: u32) -> u32 {
    if listeners <= MIN_SLOTS {
        MIN_SLOTS
    } else if listeners >= MAX_LISTENERS_PER_PORT {
        MAX_LISTENERS_PER_PORT
    } else {
        listeners.next_power_of_two()
    }
}

/// Name of the sk_msg program that writes `Connection: close` into the head of the next
/// HTTP/1.x response on a connection being drained.
pub const CLOSE_PROGRAM_NAME: &str = "close_http";

/// Name of the SOCKHASH `socket cookie (u64) -> established socket` the sk_msg program is
/// attached to: the drain's connections whose next response it is to rewrite. Never
/// pinned: when the drain ends, the map goes and every socket in it is restored.
pub const CLOSE_SOCKETS_MAP: &str = "CLOSE_SOCKETS";

/// Name of the hash map `FlowKey -> boundary::Inspection` in which the sk_msg program
/// keeps, per connection, where the server is in its output ([`boundary`]) and whether it
/// is done with it: the loader takes finished connections out of [`CLOSE_SOCKETS_MAP`].
pub const CLOSE_STATE_MAP: &str = "CLOSE_STATE";

/// Names of the read-only globals (u32) holding the byte offsets of `write_seq`,
/// `snd_una`, `rcv_nxt` and `copied_seq` in the running kernel's `struct tcp_sock`, in
/// that order. The loader reads them from the kernel's BTF; `struct tcp_sock` changes
/// between kernels and is opaque in aya's bindings.
pub const TCP_SOCK_OFFSET_GLOBALS: [&str; 4] = [
    "TCP_WRITE_SEQ_OFFSET",
    "TCP_SND_UNA_OFFSET",
    "TCP_RCV_NXT_OFFSET",
    "TCP_COPIED_SEQ_OFFSET",
];

/// The fields of `struct tcp_sock` named in [`TCP_SOCK_OFFSET_GLOBALS`], in the same order.
pub const TCP_SOCK_FIELDS: [&str; 4] = ["write_seq", "snd_una", "rcv_nxt", "copied_seq"];

/// Name of the read-only global (u32, 0 or 1): whether the drain was told the port's
/// upgraded connections are websockets (`--websocket-close`), so a close frame may follow
/// a candidate write that is whole websocket frames ([`websocket`]).
pub const WEBSOCKET_CLOSE_GLOBAL: &str = "WEBSOCKET_CLOSE";

/// How many connections one drain can have in [`CLOSE_SOCKETS_MAP`] at once.
pub const MAX_CLOSE_SOCKETS: u32 = 65536;

/// [`COUNTS_MAP`] index: responses that `Connection: close` was written into.
pub const COUNT_CLOSE_INJECTED: u32 = 2;

/// [`COUNTS_MAP`] index: websocket connections sent a close frame (1001, going away).
pub const COUNT_WEBSOCKET_CLOSED: u32 = 3;

/// [`COUNTS_MAP`] index: connections the sk_msg program left alone for good (their
/// output did not follow the grammar, or could not be changed).
pub const COUNT_LEFT_ALONE: u32 = 4;

/// The entries of [`COUNTS_MAP`].
pub const COUNTS: u32 = 8;

/// The close frame the sk_msg program appends to a server's websocket message: final,
/// opcode close, unmasked, 2 bytes of payload, status 1001 ("going away").
pub const WEBSOCKET_GOING_AWAY: &[u8; 4] = &[0x88, 0x02, 0x03, 0xe9];

/// The header the sk_msg program inserts right after a response's status line.
pub const CONNECTION_CLOSE: &[u8; 19] = b"Connection: close\r\n";

/// A connection as the sk_msg program sees it (`struct sk_msg_md`): the key of
/// [`CLOSE_STATE_MAP`]. Addresses and the remote port are in network byte order as the
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_a_power_of_two_between_the_minimum_and_the_limit() {
        assert_eq!(slots_for(0), MIN_SLOTS);
        assert_eq!(slots_for(1), MIN_SLOTS);
        assert_eq!(slots_for(MIN_SLOTS), MIN_SLOTS);
        assert_eq!(slots_for(MIN_SLOTS + 1), 2 * MIN_SLOTS);
        assert_eq!(slots_for(100), 128);
        assert_eq!(slots_for(MAX_LISTENERS_PER_PORT), MAX_LISTENERS_PER_PORT);
        assert_eq!(slots_for(u32::MAX), MAX_LISTENERS_PER_PORT);
        assert!(2 * slots_for(u32::MAX) <= LISTENER_SLOTS);
    }
}

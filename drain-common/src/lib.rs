//! The contract between the sk_lookup program and its userspace loader.
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

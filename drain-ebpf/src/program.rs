//! The program itself, compiled only for the BPF target (see `main.rs`).

use core::{cell::UnsafeCell, mem::size_of};

use aya_ebpf::{
    bindings::{
        bpf_map_def,
        bpf_map_type::BPF_MAP_TYPE_SOCKHASH,
        bpf_sock,
        sk_action::{SK_DROP, SK_PASS},
    },
    helpers::{bpf_ktime_get_boot_ns, bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release},
    macros::{map, sk_lookup},
    maps::{Array, PerCpuArray},
    programs::SkLookupContext,
    Global,
};
use aya_log_ebpf::debug;
use drain_common::{COUNT_REFUSED, COUNT_STEERED, LISTENER_SLOTS, MAX_LISTENERS_PER_PORT};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;
/// `BPF_SK_LOOKUP_F_NO_REUSEPORT`: take the assigned socket, not its reuseport group.
const NO_REUSEPORT: u64 = 2;

/// Set by the loader (`drain_common::PORT_GLOBAL`).
#[unsafe(no_mangle)]
static DRAIN_PORT: Global<u16> = Global::new(0);

/// Set by the loader (`drain_common::LISTENER_SLOTS_GLOBAL`): the slots of
/// `DRAIN_LISTENERS` and `DRAIN_V6ONLY` in this instance. A constant to the verifier,
/// which walks the loop over them only this far.
#[unsafe(no_mangle)]
static DRAIN_LISTENER_SLOTS: Global<u32> = Global::new(LISTENER_SLOTS);

/// Set by the loader (`drain_common::SUCCESSOR_SLOTS_GLOBAL`): the slots of `SUCCESSORS`
/// in this instance.
#[unsafe(no_mangle)]
static DRAIN_SUCCESSOR_SLOTS: Global<u32> = Global::new(MAX_LISTENERS_PER_PORT);

#[map(name = "COUNTS")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drain_common::COUNTS, 0);

/// `drain_common::V6ONLY_MAP`: 1 where the draining listener in the same slot is an
/// IPv6-only socket (`bpf_sock` does not carry `IPV6_V6ONLY`).
#[map(name = "DRAIN_V6ONLY")]
static DRAIN_V6ONLY: Array<u32> = Array::with_max_entries(LISTENER_SLOTS, 0);

/// `drain_common::EXPIRY_MAP`: when this drain's steering ends (`CLOCK_BOOTTIME`, ns).
#[map(name = "DRAIN_EXPIRY")]
static DRAIN_EXPIRY: Array<u64> = Array::with_max_entries(1, 0);

/// A SOCKHASH the program can look sockets up in. aya-ebpf's `SockHash` only offers
/// `redirect_sk_lookup` (lookup + assign); the refusal needs the socket itself, to compare
/// its bound address with the packet's destination.
#[repr(transparent)]
struct ListenerSockets(UnsafeCell<bpf_map_def>);

// SAFETY: the kernel owns the map; the program only passes its address to helpers.
unsafe impl Sync for ListenerSockets {}

impl ListenerSockets {
    const fn new(max_entries: u32) -> Self {
        Self(UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_SOCKHASH,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u32>() as u32,
            max_entries,
            map_flags: 0,
            id: 0,
            pinning: 0,
        }))
    }

    /// The socket in `slot`, referenced until [`Self::release`]; null when empty.
    fn get(&self, slot: u32) -> *mut bpf_sock {
        // SAFETY: `self` is a SOCKHASH of this program and `slot` lives on the stack for
        // the call.
        unsafe { bpf_map_lookup_elem(self.0.get().cast(), (&slot as *const u32).cast()) }.cast()
    }
}

/// Releases the reference a SOCKHASH lookup took.
fn release(sk: *mut bpf_sock) {
    // SAFETY: `sk` is a non-null result of one lookup, released exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
}

#[unsafe(link_section = "maps")]
#[unsafe(export_name = "DRAIN_LISTENERS")]
static DRAIN_LISTENERS: ListenerSockets = ListenerSockets::new(LISTENER_SLOTS);

#[unsafe(link_section = "maps")]
#[unsafe(export_name = "SUCCESSORS")]
static SUCCESSORS: ListenerSockets = ListenerSockets::new(MAX_LISTENERS_PER_PORT);

#[sk_lookup]
pub fn drain_steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the duration of the call.
    let lookup = unsafe { &*ctx.lookup };
    let port = DRAIN_PORT.load();
    if lookup.protocol != IPPROTO_TCP || lookup.local_port != u32::from(port) || expired() {
        return SK_PASS;
    }
    let destination = Destination {
        family: lookup.family,
        ip4: lookup.local_ip4,
        ip6: lookup.local_ip6,
        ifindex: lookup.ingress_ifindex,
    };
    // Every slot: the loader's slots are not dense (a closed listener leaves a hole).
    let listener_slots = DRAIN_LISTENER_SLOTS.load().min(LISTENER_SLOTS);
    if !(0..listener_slots).any(|slot| draining_listener_matches(slot, &destination)) {
        return SK_PASS;
    }
    // NO_REUSEPORT keeps the kernel from picking the draining listener out of a shared
    // reuseport group, so the spread over the successors (a new instance's reuseport
    // group) is made here: by the flow, as the kernel's own reuseport selection does,
    // so a retransmitted SYN lands where the first one did. The loader keeps the
    // successors in slots 0..n; the first one that takes the destination is the
    // fallback (a successor bound to another address).
    let successor_slots = DRAIN_SUCCESSOR_SLOTS.load().min(MAX_LISTENERS_PER_PORT);
    let successors = successor_count(successor_slots);
    let picked = if successors > 0 {
        flow_hash(lookup) % successors
    } else {
        0
    };
    if (successors > 0 && assign_successor(&ctx, picked, &destination))
        || (0..successor_slots).any(|slot| assign_successor(&ctx, slot, &destination))
    {
        count(COUNT_STEERED);
        debug!(
            &ctx,
            "handed a connection to draining port {} to a successor", port
        );
        return SK_PASS;
    }
    count(COUNT_REFUSED);
    debug!(&ctx, "refused a connection to draining port {}", port);
    SK_DROP
}

/// Whether the drain's steering has ended (`DRAIN_EXPIRY`).
fn expired() -> bool {
    let Some(&expiry) = DRAIN_EXPIRY.get(0) else {
        return false;
    };
    // SAFETY: a helper without arguments; every program type may call it (5.8+).
    let now = unsafe { bpf_ktime_get_boot_ns() };
    expiry != 0 && now >= expiry
}

/// Where the incoming SYN is going, and the device it arrived on. Addresses are in
/// network byte order, as the kernel hands them over in both `bpf_sk_lookup` and
/// `bpf_sock`.
struct Destination {
    family: u32,
    ip4: u32,
    ip6: [u32; 4],
    ifindex: u32,
}

/// How many successors there are: the loader fills slots 0..n and leaves the rest empty.
fn successor_count(slots: u32) -> u32 {
    let mut count = 0;
    for slot in 0..slots {
        let sk = SUCCESSORS.get(slot);
        if sk.is_null() {
            break;
        }
        release(sk);
        count = slot + 1;
    }
    count
}

/// Hands the connection to the successor in `slot` if it takes the destination.
fn assign_successor(ctx: &SkLookupContext, slot: u32, destination: &Destination) -> bool {
    let successor = SUCCESSORS.get(slot);
    if successor.is_null() {
        return false;
    }
    // An IPv6-only successor is taken for IPv6 here; for an IPv4 SYN the kernel refuses
    // the assignment itself (bpf_sk_assign: EAFNOSUPPORT), and the next one is tried.
    // SAFETY: a non-null lookup result is readable until released.
    let accepts = listener_accepts(unsafe { &*successor }, false, destination);
    // SAFETY: `ctx` is this program's context and `successor` a referenced socket.
    let assigned =
        accepts && unsafe { bpf_sk_assign(ctx.lookup.cast(), successor.cast(), NO_REUSEPORT) } == 0;
    release(successor);
    assigned
}

/// A hash of the connection's remote end and local port: the same for every SYN of one
/// connection, spread over connections (a multiplicative mix, so neighbouring ports
/// differ in the high bits that the modulo keeps).
fn flow_hash(lookup: &aya_ebpf::bindings::bpf_sk_lookup) -> u32 {
    let ip6 = lookup.remote_ip6;
    let address = lookup.remote_ip4 ^ ip6[0] ^ ip6[1] ^ ip6[2] ^ ip6[3];
    let ports = (u32::from(lookup.remote_port) << 16) ^ lookup.local_port;
    let mixed = (address ^ ports).wrapping_mul(0x9e37_79b1);
    mixed ^ (mixed >> 16)
}

/// Whether the draining listener in `slot` would take the connection.
fn draining_listener_matches(slot: u32, destination: &Destination) -> bool {
    let sk = DRAIN_LISTENERS.get(slot);
    if sk.is_null() {
        return false;
    }
    let v6only = DRAIN_V6ONLY.get(slot).is_some_and(|flag| *flag != 0);
    // SAFETY: a non-null lookup result is readable until released.
    let accepts = listener_accepts(unsafe { &*sk }, v6only, destination);
    release(sk);
    accepts
}

/// Would the kernel's own lookup consider this listener for the destination
/// (`compute_score` in inet_hashtables.c and inet6_hashtables.c)? A listener bound to a
/// device (SO_BINDTODEVICE) takes only what arrives on that device. A listener bound to
/// the wildcard address takes every address of its family, and an IPv6 wildcard listener
/// takes IPv4 too unless it is IPv6-only (`v6only`; dual stack is the Linux default).
/// VRF is left out: a listener bound to a VRF's member device, which the kernel matches
/// through the lookup's second device index, is not seen to match here.
fn listener_accepts(listener: &bpf_sock, v6only: bool, destination: &Destination) -> bool {
    if listener.bound_dev_if != 0 && listener.bound_dev_if != destination.ifindex {
        return false;
    }
    let ip6 = listener.src_ip6;
    match (listener.family, destination.family) {
        (AF_INET, AF_INET) => listener.src_ip4 == 0 || listener.src_ip4 == destination.ip4,
        (AF_INET6, AF_INET6) => ip6 == [0; 4] || ip6 == destination.ip6,
        (AF_INET6, AF_INET) if !v6only => {
            let v4_mapped = [0, 0, 0xffff_u32.to_be(), destination.ip4];
            ip6 == [0; 4] || ip6 == v4_mapped
        }
        _ => false,
    }
}

pub(crate) fn count(index: u32) {
    if let Some(count) = COUNTS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: no other CPU writes it, and the program is not
        // preempted on this one while it runs.
        unsafe { *count += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

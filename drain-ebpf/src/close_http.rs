//! The sk_msg program that asks HTTP/1.x clients to close: it writes
//! `Connection: close` into the head of a response the server sends on a connection
//! being drained, the way nginx ends keep-alive connections itself on a graceful stop. The
//! client closes after reading that response and sends its next request elsewhere, so
//! even a client that sends back to back (no pause in which a close from outside would be
//! safe) loses nothing.
//!
//! It adds bytes only where it can prove what they land in, and passes everything else
//! untouched:
//! - the write must be the first of a new response, proven from the server's TCP state
//!   (`drain_common::boundary`), never from the message's bytes: a message is not a
//!   `send()`, and a drain arms connections in the middle of responses;
//! - its bytes must start with a complete response head by RFC 9112's grammar
//!   (`drain_common::http1`); the header goes right after the status line of a final
//!   response, once per connection. A head off the grammar leaves the connection alone
//!   for good, and so does a write the kernel would not let the program change;
//! - a websocket close frame (1001, going away) follows a candidate write that is whole
//!   server frames (`drain_common::websocket`) only where the drain was told the port
//!   carries websockets ([`WEBSOCKET_CLOSE`]): the shape alone does not tell a websocket
//!   from a binary protocol.
//!
//! The decisions are shared code, run here one byte per `bpf_loop` iteration (verified
//! once, whatever the head's length) and on the host by the tests and the fuzzer.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, sk_msg_md, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_loop, bpf_msg_pop_data, bpf_msg_pull_data, bpf_skc_to_tcp_sock},
    macros::{map, sk_msg},
    maps::{HashMap, SockHash},
    programs::SkMsgContext,
    Global,
};
use drain_common::{
    boundary::{Inspection, SocketSeqs},
    http1::{unfinished, HeadParser, Verdict, HEAD_MAX},
    inband::{decide, window, Action, Judge},
    websocket::{FramesParser, MESSAGE_MAX},
    FlowKey, CONNECTION_CLOSE, COUNT_CLOSE_INJECTED, COUNT_LEFT_ALONE, COUNT_WEBSOCKET_CLOSED,
    MAX_CLOSE_SOCKETS, WEBSOCKET_GOING_AWAY,
};

use crate::program::count;

const AF_INET: u32 = 2;

/// Set by the loader (`drain_common::TCP_SOCK_OFFSET_GLOBALS`) from the kernel's BTF:
/// where the fields of `struct tcp_sock` are. Constants to the verifier (frozen `.rodata`),
/// which checks each read against the kernel's type.
#[unsafe(no_mangle)]
static TCP_WRITE_SEQ_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_SND_UNA_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_RCV_NXT_OFFSET: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TCP_COPIED_SEQ_OFFSET: Global<u32> = Global::new(0);

/// Set by the loader (`drain_common::WEBSOCKET_CLOSE_GLOBAL`): 1 where the port's upgraded
/// connections are websockets.
#[unsafe(no_mangle)]
static WEBSOCKET_CLOSE: Global<u32> = Global::new(0);

#[map(name = "CLOSE_SOCKETS")]
static CLOSE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_CLOSE_SOCKETS, 0);

/// Allocated per entry (`BPF_F_NO_PREALLOC`): a drain arms a few connections at a time,
/// and a preallocated map would take several MiB of kernel memory per drain.
#[map(name = "CLOSE_STATE")]
static CLOSE_STATE: HashMap<FlowKey, Inspection> =
    HashMap::with_max_entries(MAX_CLOSE_SOCKETS, BPF_F_NO_PREALLOC);

#[sk_msg]
pub fn close_http(ctx: SkMsgContext) -> u32 {
    // Whatever happens, the message is sent: the program only ever adds bytes.
    let _ = inspect(&ctx);
    SK_PASS
}

fn inspect(ctx: &SkMsgContext) -> Option<()> {
    // SAFETY: the kernel passes a valid sk_msg_md for the duration of the call.
    let md = unsafe { &*ctx.msg };
    let inspection = inspection(&flow_key(md))?;
    let seqs = socket_seqs(md);
    let websocket_close = WEBSOCKET_CLOSE.load() != 0;
    let action = decide(
        inspection,
        seqs.as_ref(),
        websocket_close,
        &mut Message {
            msg: ctx.msg,
            size: ctx.size(),
        },
    );
    let done = match action {
        Action::Pass => return Some(()),
        Action::LeaveAlone => {
            count(COUNT_LEFT_ALONE);
            return Some(());
        }
        Action::ConnectionClose { at } => {
            insert(ctx, at, CONNECTION_CLOSE).map(|()| COUNT_CLOSE_INJECTED)
        }
        Action::WebsocketClose { at } => {
            insert(ctx, at, WEBSOCKET_GOING_AWAY).map(|()| COUNT_WEBSOCKET_CLOSED)
        }
    };
    match done {
        Some(counter) => count(counter),
        None => {
            inspection.refused();
            count(COUNT_LEFT_ALONE);
        }
    }
    Some(())
}

/// The connection's record, created (unmarked) on its first message.
fn inspection(key: &FlowKey) -> Option<&'static mut Inspection> {
    if let Some(found) = CLOSE_STATE.get_ptr_mut(key) {
        // SAFETY: a value of this program's map; the socket is locked for the whole
        // `sendmsg`, so no other run of the program touches this connection's record.
        return Some(unsafe { &mut *found });
    }
    CLOSE_STATE
        .insert(key, &Inspection::default(), u64::from(BPF_NOEXIST))
        .ok()?;
    // SAFETY: as above.
    CLOSE_STATE
        .get_ptr_mut(key)
        .map(|found| unsafe { &mut *found })
}

/// The server's sequence numbers, read from its `tcp_sock` at the offsets the loader
/// found in the kernel's BTF.
fn socket_seqs(md: &sk_msg_md) -> Option<SocketSeqs> {
    // SAFETY: `sk` is a context field (Linux 5.8+), read at its constant offset.
    let sk = unsafe { core::ptr::read_volatile(&md.__bindgen_anon_3.sk) };
    // SAFETY: a socket of this program's context; the helper checks its type.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tcp.is_null() {
        return None;
    }
    let field = |offset: &Global<u32>| {
        // SAFETY: `tcp` is a `struct tcp_sock` of the running kernel and the offset is
        // one of its u32 fields, from that kernel's BTF; the verifier checks the read
        // against the type and makes it fault-safe.
        unsafe {
            core::ptr::read_volatile(tcp.cast::<u8>().add(offset.load() as usize).cast::<u32>())
        }
    };
    Some(SocketSeqs {
        write_seq: field(&TCP_WRITE_SEQ_OFFSET),
        snd_una: field(&TCP_SND_UNA_OFFSET),
        rcv_nxt: field(&TCP_RCV_NXT_OFFSET),
        copied_seq: field(&TCP_COPIED_SEQ_OFFSET),
    })
}

/// Inserts `bytes` at `at`. The pushed space is fresh, uninitialized memory: it is
/// written, or taken out again.
fn insert<const N: usize>(ctx: &SkMsgContext, at: u32, bytes: &[u8; N]) -> Option<()> {
    ctx.push_data(at, N as u32, 0).ok()?;
    if write_bytes(ctx, at, bytes).is_none() {
        // SAFETY: removes exactly the range pushed above.
        unsafe { bpf_msg_pop_data(ctx.msg, at, N as u32, 0) };
        return None;
    }
    Some(())
}

/// The state of a byte-by-byte scan of the message's first bytes, shared with the
/// `bpf_loop` callback through the stack.
struct Scan<P> {
    msg: *mut sk_msg_md,
    parser: P,
    /// Set by the callback when it stops the loop: the verdict in two plain words, every
    /// bit of them written (the verifier refuses an enum's unwritten payload).
    stopped: u32,
    words: [u32; 2],
}

impl<P> Scan<P> {
    fn new(msg: *mut sk_msg_md, parser: P) -> Self {
        Self {
            msg,
            parser,
            stopped: 0,
            words: [0; 2],
        }
    }
}

/// The write's bytes, judged in place: pulled (made linear), then fed to the shared
/// parsers one byte per `bpf_loop` iteration.
struct Message {
    msg: *mut sk_msg_md,
    size: u32,
}

impl Judge for Message {
    fn size(&self) -> u32 {
        self.size
    }

    fn head(&mut self) -> Verdict {
        let window = window(self.size);
        if pull(self.msg, 0, window).is_none() {
            // Bytes the program cannot read are bytes it cannot prove anything of.
            return Verdict::Unusual;
        }
        let mut scan = Scan::new(self.msg, HeadParser::new());
        run(window, head_step, &mut scan);
        if scan.stopped == 0 {
            return unfinished(self.size);
        }
        verdict_of(scan.words)
    }

    fn whole_frames(&mut self) -> bool {
        // `head` pulled the bytes up to its window, which holds a write this short whole.
        let mut scan = Scan::new(self.msg, FramesParser::new());
        run(self.size, frames_step, &mut scan);
        scan.stopped == 0 && scan.parser.whole()
    }
}

extern "C" fn head_step(index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `Scan` given to it in `Message::head`.
    let scan = unsafe { &mut *scan.cast::<Scan<HeadParser>>() };
    let verdict = match byte_at(scan.msg, index, HEAD_MAX) {
        Some(byte) => scan.parser.push(index as u32, byte),
        None => Some(Verdict::Incomplete),
    };
    let Some(verdict) = verdict else {
        return 0;
    };
    scan.words = words_of(verdict);
    scan.stopped = 1;
    1
}

fn words_of(verdict: Verdict) -> [u32; 2] {
    match verdict {
        Verdict::Final { status_line_end } => [0, status_line_end],
        Verdict::Interim => [1, 0],
        Verdict::Switching => [2, 0],
        Verdict::Incomplete => [3, 0],
        Verdict::TooLong => [4, 0],
        Verdict::Unusual => [5, 0],
    }
}

fn verdict_of([code, status_line_end]: [u32; 2]) -> Verdict {
    match code {
        0 => Verdict::Final { status_line_end },
        1 => Verdict::Interim,
        2 => Verdict::Switching,
        3 => Verdict::Incomplete,
        4 => Verdict::TooLong,
        _ => Verdict::Unusual,
    }
}

extern "C" fn frames_step(index: u64, scan: *mut c_void) -> i64 {
    // SAFETY: `bpf_loop` passes the `Scan` given to it in `Message::whole_frames`.
    let scan = unsafe { &mut *scan.cast::<Scan<FramesParser>>() };
    let whole_so_far = match byte_at(scan.msg, index, MESSAGE_MAX) {
        Some(byte) => scan.parser.push(byte),
        None => false,
    };
    if whole_so_far {
        return 0;
    }
    scan.stopped = 1;
    1
}

/// Calls `step` for indices `0..count` until it returns 1.
fn run<P>(count: u32, step: extern "C" fn(u64, *mut c_void) -> i64, scan: &mut Scan<P>) {
    // SAFETY: `step` is a static function of this program and `scan` outlives the loop.
    unsafe { bpf_loop(count, step as *mut c_void, (scan as *mut Scan<P>).cast(), 0) };
}

/// Byte `index` of the message, if it is within the pulled bytes and below `limit` (a
/// power of two: the mask bounds the offset for the verifier).
fn byte_at(msg: *mut sk_msg_md, index: u64, limit: u32) -> Option<u8> {
    // SAFETY: the program's context, passed through the scan.
    let md = unsafe { &*msg };
    // SAFETY: context fields, read at their constant offsets.
    let data = unsafe { core::ptr::read_volatile(&md.__bindgen_anon_1.data) } as usize;
    // SAFETY: as above.
    let data_end = unsafe { core::ptr::read_volatile(&md.__bindgen_anon_2.data_end) } as usize;
    let at = (index as usize) & (limit as usize - 1);
    if data + at + 1 > data_end {
        return None;
    }
    // SAFETY: byte `at` is within the message (checked above).
    Some(unsafe { *((data + at) as *const u8) })
}

/// Makes bytes `start..end` of the message readable at `data`.
fn pull(msg: *mut sk_msg_md, start: u32, end: u32) -> Option<()> {
    // SAFETY: `msg` is this program's context.
    (unsafe { bpf_msg_pull_data(msg, start, end, 0) } == 0).then_some(())
}

/// Writes `bytes` into the space pushed at `at`.
fn write_bytes<const N: usize>(ctx: &SkMsgContext, at: u32, bytes: &[u8; N]) -> Option<()> {
    pull(ctx.msg, at, at + N as u32)?;
    let data = ctx.data();
    if data + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the `N` bytes at `data` are within the message (checked above).
    unsafe { *(data as *mut [u8; N]) = *bytes };
    Some(())
}

fn flow_key(md: &sk_msg_md) -> FlowKey {
    // The verifier accepts only context reads at constant offsets: every field is read
    // on its own, then chosen (a pointer chosen by family would be a modified context
    // pointer).
    let read = |field: &u32| {
        // SAFETY: a field of the context, read at its own constant offset.
        unsafe { core::ptr::read_volatile(field) }
    };
    let family = read(&md.family);
    let remote_ip4 = read(&md.remote_ip4);
    let local_ip4 = read(&md.local_ip4);
    let remote_ip6 = [
        read(&md.remote_ip6[0]),
        read(&md.remote_ip6[1]),
        read(&md.remote_ip6[2]),
        read(&md.remote_ip6[3]),
    ];
    let local_ip6 = [
        read(&md.local_ip6[0]),
        read(&md.local_ip6[1]),
        read(&md.local_ip6[2]),
        read(&md.local_ip6[3]),
    ];
    let (remote_ip, local_ip) = if family == AF_INET {
        ([remote_ip4, 0, 0, 0], [local_ip4, 0, 0, 0])
    } else {
        (remote_ip6, local_ip6)
    };
    FlowKey {
        family,
        remote_port: read(&md.remote_port),
        local_port: read(&md.local_port),
        remote_ip,
        local_ip,
    }
}

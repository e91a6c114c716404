//! The sk_msg program that asks HTTP/1.x clients to close: it writes
//! `Connection: close` into the head of the next response the server sends on a
//! connection being drained, the way nginx ends keep-alive connections itself on a
//! graceful stop. The client closes after reading that response and sends its next
//! request elsewhere, so even a client that sends back to back (no pause in which a
//! close from outside would be safe) loses nothing.
//!
//! The program runs on every `sendmsg` of a socket in [`CLOSE_SOCKETS`] (the loader
//! puts the drain's connections there) and changes a message only when it is certainly
//! the start of a final HTTP/1.x response: it begins with `HTTP/1.0 ` or `HTTP/1.1 `, a
//! three-digit status of 200 to 599, and its status line ends within the message. The
//! header goes right after the status line, once per connection ([`CLOSE_DONE`]);
//! everything else (interim 1xx responses, bodies, TLS, HTTP/2, any other protocol, a
//! status line split over two writes) passes untouched.
//!
//! A plaintext websocket (after its HTTP Upgrade) is asked the same way: a server
//! message that is exactly one or more whole server frames gets a close frame (1001,
//! going away) appended, once per connection ([`whole_websocket_frames`]).

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, sk_msg_md, BPF_F_NO_PREALLOC},
    helpers::{bpf_msg_pop_data, bpf_msg_pull_data},
    macros::{map, sk_msg},
    maps::{HashMap, SockHash},
    programs::SkMsgContext,
};
use drain_common::{
    FlowKey, CONNECTION_CLOSE, COUNT_CLOSE_INJECTED, COUNT_WEBSOCKET_CLOSED, MAX_CLOSE_SOCKETS,
    WEBSOCKET_GOING_AWAY,
};

use crate::program::count;

const AF_INET: u32 = 2;

/// `HTTP/1.x NNN` and the byte after it: the shortest status line is 14 bytes with its
/// CRLF.
const STATUS_END: usize = 12;

/// How far into a message the status line's CRLF is looked for. A reason phrase longer
/// than this is left alone (none of the common servers writes one).
const HEAD_WINDOW: u32 = 256;

/// How many websocket frames one message may hold to be recognised (a bounded loop).
const MAX_WEBSOCKET_FRAMES: u32 = 16;

#[map(name = "CLOSE_SOCKETS")]
static CLOSE_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_CLOSE_SOCKETS, 0);

/// Allocated per entry (`BPF_F_NO_PREALLOC`): a drain marks a few connections at a time,
/// and a preallocated map would take several MiB of kernel memory per drain.
#[map(name = "CLOSE_DONE")]
static CLOSE_DONE: HashMap<FlowKey, u32> =
    HashMap::with_max_entries(MAX_CLOSE_SOCKETS, BPF_F_NO_PREALLOC);

#[sk_msg]
pub fn close_http(ctx: SkMsgContext) -> u32 {
    // Whatever happens, the message is sent: the program only ever adds a header.
    let _ = rewrite(&ctx);
    SK_PASS
}

fn rewrite(ctx: &SkMsgContext) -> Option<()> {
    // SAFETY: the kernel passes a valid sk_msg_md for the duration of the call.
    let md = unsafe { &*ctx.msg };
    let key = flow_key(md);
    // SAFETY: a lookup by a key on the stack; the value is not kept.
    if unsafe { CLOSE_DONE.get(&key) }.is_some() {
        return None;
    }
    let window = ctx.size().min(HEAD_WINDOW);
    if window == 0 {
        return None;
    }
    pull(ctx.msg, 0, window)?;
    if let Some(insert_at) = status_line_end(ctx) {
        insert(ctx, insert_at, CONNECTION_CLOSE)?;
        count(COUNT_CLOSE_INJECTED);
    } else if whole_websocket_frames(ctx, window) {
        // After the server's own frames, so an answer it was sending still arrives first.
        insert(ctx, window, WEBSOCKET_GOING_AWAY)?;
        count(COUNT_WEBSOCKET_CLOSED);
    } else {
        return None;
    }
    let _ = CLOSE_DONE.insert(&key, &1, 0);
    Some(())
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

/// Whether the message (whole within `window`, already pulled) is one or more complete
/// websocket frames as a server sends them: final (FIN), unmasked, no reserved bits but
/// RSV1 (compression) on data frames, a data or ping/pong opcode, at most 125 bytes of
/// payload, the last frame ending exactly at the end of the message. HTTP/1.x, TLS
/// records and HTTP/2 frames never look like this (their first byte lacks FIN or a
/// websocket opcode, or their sizes do not add up).
fn whole_websocket_frames(ctx: &SkMsgContext, window: u32) -> bool {
    if ctx.size() != window {
        return false;
    }
    let data = ctx.data();
    let data_end = ctx.data_end();
    let size = window as usize;
    let mut at = 0usize;
    let mut frames = 0;
    while frames < MAX_WEBSOCKET_FRAMES {
        if at == size {
            return frames > 0;
        }
        if at > size || data + at + 2 > data_end {
            return false;
        }
        // SAFETY: bytes `at` and `at + 1` are within the message (checked above).
        let [first, second] = unsafe { *((data + at) as *const [u8; 2]) };
        let opcode = first & 0x0f;
        let length = (second & 0x7f) as usize;
        let control = opcode == 0x9 || opcode == 0xa;
        // A 16- or 64-bit length (126, 127) means a frame longer than the window.
        if first & 0x80 == 0
            || first & 0x30 != 0
            || second & 0x80 != 0
            || !(opcode == 0x1 || opcode == 0x2 || control)
            || (control && first & 0x40 != 0)
            || length > 125
        {
            return false;
        }
        at += 2 + length;
        frames += 1;
    }
    false
}

/// Makes bytes `start..end` of the message readable at `data`.
fn pull(msg: *mut sk_msg_md, start: u32, end: u32) -> Option<()> {
    // SAFETY: `msg` is this program's context.
    (unsafe { bpf_msg_pull_data(msg, start, end, 0) } == 0).then_some(())
}

/// Where the status line of a final HTTP/1.0 or 1.1 response ends (after its CRLF), if
/// the message starts with one and holds it whole.
fn status_line_end(ctx: &SkMsgContext) -> Option<u32> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + STATUS_END + 2 > data_end {
        return None;
    }
    // SAFETY: the 14 bytes at `data` are within the message (checked above).
    let head = unsafe { &*(data as *const [u8; STATUS_END + 2]) };
    let final_status = head.starts_with(b"HTTP/1.")
        && (head[7] == b'0' || head[7] == b'1')
        && head[8] == b' '
        && (b'2'..=b'5').contains(&head[9])
        && head[10].is_ascii_digit()
        && head[11].is_ascii_digit()
        && (head[12] == b' ' || head[12] == b'\r');
    if !final_status {
        return None;
    }
    let mut at = STATUS_END;
    while at < HEAD_WINDOW as usize - 1 {
        if data + at + 2 > data_end {
            return None;
        }
        // SAFETY: bytes `at` and `at + 1` are within the message (checked above).
        let pair = unsafe { *((data + at) as *const [u8; 2]) };
        if pair == *b"\r\n" {
            return Some(at as u32 + 2);
        }
        at += 1;
    }
    None
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

//! The in-band close's decisions ([`inband::decide`]) against a request-aware model of
//! the connections they run on, for a bounded time inside `cargo test`.
//!
//! The generator writes a server's output over one connection as exchanges with their
//! requests (GET, HEAD, POST, `Expect: 100-continue`, pipelined batches, upgrades), and
//! knows the truth of every byte: where each response head starts and its status line
//! ends, where bodies are, where the connection became a websocket and where its frames
//! end. It then writes that output the way servers and the kernel do: a response as one
//! or more `send()`s, each cut into sk_msg messages (32 KiB scatterlist bounds, 64 KiB per
//! `sendfile`, and random extra cuts), with the client's acks and the server's reads
//! interleaved and the socket's four sequence numbers tracked from random initial values
//! (so they wrap). Every message from a random arming point on goes through `decide`, and
//! every decision is checked against the truth (the rules are [`check`]'s), with
//! `httparse` as a second opinion on every head written into.
//!
//! Time: `DRAIN_FUZZ_SECONDS`, else 60 s under `CI=true`, else 3 s (as drain-daemon's
//! tests/fuzz.rs). `DRAIN_FUZZ_SEED` replays a run, `DRAIN_FUZZ_STREAM` one stream of
//! it; a failure prints both and the stream's messages up to the wrong decision.
//!
//! Known limit ([`Finding::ReadInsideUnit`]): a server that reads between two writes of
//! one response, frame or record makes the later write a candidate when what it read
//! arrived after its previous write, all its output acknowledged and nothing else waiting
//! (a client that pipelines while a response is in flight, a full-duplex protocol). The
//! socket cannot tell that read from a request's, and the bytes then decide alone:
//! docs/in-band-close.md states it. The fuzzer generates such servers and counts these
//! decisions by protocol, and fails when they are more than one in 20,000 streams (seen:
//! one in 150,000 to 600,000; a decision that ignored input waiting at the previous write,
//! or a client sending while output is in flight, makes about one in 3,400); any other
//! wrong decision fails at once.
//! The tests at the end hold one case of each kind those rules close.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Duration, Instant},
};

use drain_common::{
    boundary::Inspection,
    boundary::SocketSeqs,
    http1::HEAD_MAX,
    inband::{decide, Action, Bytes},
};

fn budget() -> Duration {
    let seconds = match std::env::var("DRAIN_FUZZ_SECONDS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("DRAIN_FUZZ_SECONDS={text:?} is not a number of seconds")),
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => 60,
        Err(_) => 3,
    };
    Duration::from_secs(seconds)
}

fn env_seed(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number"))
    })
}

// --- The truth about a connection's output ---------------------------------------------

/// A response head the generator wrote.
#[derive(Clone, Copy, Debug)]
struct Head {
    status: u16,
    /// Bytes from the head's start to the end of its status line (CRLF or LF included).
    status_line_end: u32,
    /// The whole head's length, up to and including the empty line.
    len: usize,
    /// CRLF line ends, no obs-fold, no space before a colon: a head RFC 9112 allows.
    grammatical: bool,
}

/// One sk_msg message: `len` bytes of the output from `start`, with the socket's state
/// when the program ran on it.
#[derive(Clone, Copy, Debug)]
struct Message {
    start: usize,
    len: usize,
    seqs: SocketSeqs,
    /// The server read request bytes since its previous write while that write had left
    /// a response (or frame, or record) unfinished.
    read_inside_unit: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.x exchanges.
    Http,
    /// HTTP/1.x exchanges, then a `101` and websocket frames.
    Upgrade,
    /// Websocket frames from the start: upgraded before the drain armed it.
    Websocket,
    /// A binary protocol (TLV, CBOR, RESP, TLS records, HTTP/2 frames) from the start.
    Binary,
}

/// How a generated connection behaves.
#[derive(Clone, Copy, Debug)]
struct Shape {
    protocol: Protocol,
    /// No pipelining, every output acknowledged before the next request, no reads
    /// inside a response, no adversarial bodies, heads whole in their first message: the
    /// streams recall is measured on.
    clean: bool,
    pipelining: bool,
    /// The client leaves output unacknowledged when it pipelines.
    slow_acks: bool,
    /// The server reads while a response (or frame) is half written: read-ahead of
    /// pipelined requests, request bodies read after the response head, full duplex.
    read_inside: bool,
    /// Bodies and payloads that look like heads or frames, odd heads, split heads.
    adversarial: bool,
    /// `--websocket-close`: the user asserts the port's non-HTTP connections are websockets.
    websocket_close: bool,
}

impl Shape {
    fn random(rng: &mut fastrand::Rng) -> Self {
        let protocol = match rng.u8(..20) {
            0..=10 => Protocol::Http,
            11..=13 => Protocol::Upgrade,
            14..=16 => Protocol::Websocket,
            _ => Protocol::Binary,
        };
        let clean = protocol == Protocol::Http && rng.u8(..3) == 0;
        let messy = !clean;
        Self {
            protocol,
            clean,
            pipelining: messy && rng.bool(),
            slow_acks: messy && rng.bool(),
            read_inside: messy && rng.u8(..4) == 0,
            adversarial: messy && rng.bool(),
            // A binary protocol only with the close frame off: with it on, the user has
            // asserted that the port's non-HTTP connections are websockets.
            websocket_close: protocol != Protocol::Binary && rng.bool(),
        }
    }
}

/// What a server writes as one unit: a response, a websocket message, a binary record.
/// Each segment may start a `send()` of its own.
#[derive(Default)]
struct Unit {
    segments: Vec<Vec<u8>>,
    /// Heads in the unit, by their offset in it.
    heads: Vec<(usize, Head)>,
    /// Where websocket frames end, by offset in the unit.
    frame_ends: Vec<usize>,
    /// The segments from this one on are one `sendfile`.
    sendfile_from: Option<usize>,
}

/// A connection's output, its truth, and its socket as the server writes it.
#[derive(Default)]
struct Stream {
    out: Vec<u8>,
    heads: HashMap<usize, Head>,
    /// Where each unit starts, in order.
    unit_starts: Vec<usize>,
    /// Where the connection's websocket frames end, in order.
    frame_ends: Vec<usize>,
    websocket_from: Option<usize>,
    messages: Vec<Message>,
    iss: u32,
    irs: u32,
    /// Output acknowledged.
    acked: usize,
    /// Request bytes the client has sent, of which `arrived` arrived, of which `read` read.
    sent: usize,
    arrived: usize,
    read: usize,
    in_unit: bool,
    read_inside_unit: bool,
    /// Request bytes the server reads after the first send of the unit it is writing.
    owed_read: Option<usize>,
    /// Random acks and reads between messages and sends (off in scripted tests).
    random: bool,
    /// Scripted: the client acknowledges everything between two sends of a unit.
    ack_between: bool,
    read_inside: bool,
    extra_cuts: bool,
}

impl Stream {
    fn new(rng: &mut fastrand::Rng, shape: &Shape) -> Self {
        // Near the wrap half the time: the decision must not compare sequence numbers
        // as integers.
        let mut initial = || {
            if rng.bool() {
                u32::MAX - rng.u32(..70_000)
            } else {
                rng.u32(..)
            }
        };
        Self {
            iss: initial(),
            irs: initial(),
            random: true,
            read_inside: shape.read_inside,
            extra_cuts: !shape.clean,
            ..Self::default()
        }
    }

    /// A stream written by a script: no random acks, reads or cuts.
    fn scripted() -> Self {
        Self {
            iss: u32::MAX - 100,
            irs: u32::MAX - 10,
            ..Self::default()
        }
    }

    fn seqs(&self) -> SocketSeqs {
        SocketSeqs {
            write_seq: self.iss.wrapping_add(self.out.len() as u32),
            snd_una: self.iss.wrapping_add(self.acked as u32),
            rcv_nxt: self.irs.wrapping_add(self.arrived as u32),
            copied_seq: self.irs.wrapping_add(self.read as u32),
        }
    }

    fn client_sends(&mut self, bytes: usize) {
        self.sent += bytes;
    }

    fn arrive_to(&mut self, at: usize) {
        assert!(at <= self.sent);
        self.arrived = self.arrived.max(at);
    }

    fn read_to(&mut self, at: usize) {
        assert!(at <= self.arrived);
        if at > self.read {
            self.read = at;
            self.read_inside_unit |= self.in_unit;
        }
    }

    fn ack_all(&mut self) {
        self.acked = self.out.len();
    }

    fn ack_some(&mut self, rng: &mut fastrand::Rng) {
        let written = self.out.len();
        if written > self.acked {
            self.acked = if rng.bool() {
                written
            } else {
                rng.usize(self.acked..=written)
            };
        }
    }

    /// The client has everything the server wrote, sends `request` bytes, and the server
    /// reads them all: a non-pipelined exchange's start.
    fn ask(&mut self, request: usize) {
        self.ack_all();
        self.client_sends(request);
        self.arrive_to(self.sent);
        self.read_to(self.arrived);
    }

    /// What may happen between two sends of the server.
    fn between_sends(&mut self, rng: &mut fastrand::Rng) {
        if let Some(at) = self.owed_read.take() {
            self.read_to(at);
        }
        if !self.random {
            if self.ack_between {
                self.ack_all();
            }
            return;
        }
        if rng.bool() {
            self.ack_some(rng);
        }
        if self.sent > self.arrived && rng.bool() {
            let at = rng.usize(self.arrived + 1..=self.sent);
            self.arrive_to(at);
        }
        if self.read_inside && self.arrived > self.read && rng.bool() {
            let at = rng.usize(self.read + 1..=self.arrived);
            self.read_to(at);
        }
    }

    /// One `send()` (or `sendfile`) of `bytes`, cut into messages as the kernel cuts it.
    fn send(&mut self, rng: &mut fastrand::Rng, bytes: &[u8], sendfile: bool) {
        let bound = if sendfile { 64 << 10 } else { 32 << 10 };
        let mut at = 0;
        while at < bytes.len() {
            let mut len = (bytes.len() - at).min(bound);
            if self.extra_cuts && len > 1 && rng.u8(..16) == 0 {
                len = rng.usize(1..len);
            }
            self.messages.push(Message {
                start: self.out.len(),
                len,
                seqs: self.seqs(),
                read_inside_unit: self.read_inside_unit,
            });
            self.read_inside_unit = false;
            self.out.extend_from_slice(&bytes[at..at + len]);
            at += len;
            if at < bytes.len() && self.random {
                // The sender may wait for memory mid-send: acks are processed then, and a
                // concurrent reader may read.
                if rng.u8(..8) == 0 {
                    self.ack_some(rng);
                }
                if self.read_inside && self.arrived > self.read && rng.u8(..16) == 0 {
                    self.read_to(self.arrived);
                }
            }
        }
    }

    /// Writes `unit`, each segment starting a new send with chance `split`/16.
    fn write_unit(&mut self, rng: &mut fastrand::Rng, unit: Unit, split: u8) {
        let base = self.out.len();
        self.unit_starts.push(base);
        for (at, head) in unit.heads {
            self.heads.insert(base + at, head);
        }
        self.frame_ends
            .extend(unit.frame_ends.iter().map(|end| base + end));
        let mut sends: Vec<(Vec<u8>, bool)> = Vec::new();
        for (i, segment) in unit.segments.into_iter().enumerate() {
            let in_sendfile = unit.sendfile_from.is_some_and(|from| i > from);
            match sends.last_mut() {
                Some((bytes, _)) if in_sendfile => bytes.extend_from_slice(&segment),
                Some((bytes, _)) if unit.sendfile_from != Some(i) && rng.u8(..16) >= split => {
                    bytes.extend_from_slice(&segment);
                }
                _ => sends.push((segment, unit.sendfile_from == Some(i))),
            }
        }
        self.in_unit = true;
        for (i, (bytes, sendfile)) in sends.iter().enumerate() {
            if i > 0 {
                self.between_sends(rng);
            }
            self.send(rng, bytes, *sendfile);
        }
        self.in_unit = false;
        if let Some(at) = self.owed_read.take() {
            self.read_to(at);
        }
    }

    /// Writes `bytes` as one unit of one send each piece (scripted tests).
    fn write_pieces(&mut self, pieces: &[&[u8]], sendfile: bool) {
        let unit = Unit {
            segments: pieces.iter().map(|piece| piece.to_vec()).collect(),
            heads: head_at_start(pieces[0]).into_iter().collect(),
            sendfile_from: sendfile.then_some(pieces.len() - 1),
            ..Unit::default()
        };
        self.write_unit(&mut fastrand::Rng::with_seed(0), unit, 16);
    }
}

/// The head at the start of `bytes` if there is one (scripted tests): its truth is read
/// back from the bytes, which the scripts write by hand.
fn head_at_start(bytes: &[u8]) -> Option<(usize, Head)> {
    if !bytes.starts_with(b"HTTP/1.") {
        return None;
    }
    let line = bytes.iter().position(|&b| b == b'\n')? + 1;
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    let len = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    let status = std::str::from_utf8(&bytes[9..12]).ok()?.parse().ok()?;
    let grammatical = !bytes[..len]
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
    Some((
        0,
        Head {
            status,
            status_line_end: line as u32,
            len,
            grammatical,
        },
    ))
}

// --- Responses ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
}

#[derive(Clone, Copy, Debug)]
struct Request {
    method: Method,
    head: usize,
    body: usize,
    expect_continue: bool,
    upgrade: bool,
}

impl Request {
    fn random(rng: &mut fastrand::Rng, shape: &Shape, alone: bool) -> Self {
        let method = match rng.u8(..10) {
            0..=5 => Method::Get,
            6 => Method::Head,
            _ => Method::Post,
        };
        let body = if method == Method::Post {
            rng.usize(0..4000)
        } else {
            0
        };
        Self {
            method,
            head: rng.usize(40..700),
            body,
            expect_continue: alone && body > 0 && rng.u8(..3) == 0,
            upgrade: alone && shape.protocol == Protocol::Upgrade && rng.u8(..3) == 0,
        }
    }

    fn len(&self) -> usize {
        self.head + self.body
    }
}

/// A response head by `eol` line ends; `odd` bends the grammar (obs-fold, a space before
/// a colon).
fn head(
    version: u8,
    status: u16,
    reason: &[u8],
    fields: &[(Vec<u8>, Vec<u8>)],
    eol: &[u8],
    odd: Option<usize>,
) -> (Vec<u8>, Head) {
    let mut bytes = format!("HTTP/1.{version} {status:03}").into_bytes();
    if reason != b"-" {
        bytes.push(b' ');
        bytes.extend_from_slice(reason);
    }
    bytes.extend_from_slice(eol);
    let status_line_end = bytes.len() as u32;
    for (i, (name, value)) in fields.iter().enumerate() {
        bytes.extend_from_slice(name);
        if odd == Some(2 * i) {
            bytes.push(b' ');
        }
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(eol);
        if odd == Some(2 * i + 1) {
            bytes.extend_from_slice(b"  folded");
            bytes.extend_from_slice(eol);
        }
    }
    bytes.extend_from_slice(eol);
    let len = bytes.len();
    let grammatical = eol == b"\r\n" && odd.is_none_or(|odd| odd >= 2 * fields.len());
    (
        bytes,
        Head {
            status,
            status_line_end,
            len,
            grammatical,
        },
    )
}

fn field(name: &str, value: impl AsRef<[u8]>) -> (Vec<u8>, Vec<u8>) {
    (name.as_bytes().to_vec(), value.as_ref().to_vec())
}

const REASONS: [&[u8]; 10] = [
    b"OK",
    b"Not Found",
    b"",
    b"-",
    b"No Content",
    b"Not Modified",
    b"I'm a teapot",
    b"Tab\there",
    b"Gr\xfc\xdfe",
    b"Internal Server Error",
];

const STATUSES: [u16; 14] = [
    200, 200, 200, 200, 201, 204, 206, 301, 304, 404, 418, 500, 503, 599,
];

/// An HTTP response text, as a `message/http` body or an `application/http` part holds.
fn http_text(rng: &mut fastrand::Rng) -> Vec<u8> {
    let body = b"hello";
    let mut text = format!(
        "HTTP/1.1 {} OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        [200, 404, 500][rng.usize(..3)],
        body.len()
    )
    .into_bytes();
    text.extend_from_slice(body);
    text
}

/// Payloads that look like something else: heads, frames, status lines, CBOR.
fn lookalike(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(..8) {
        0 => http_text(rng),
        1 => b"HTTP/1.1 200 O\r\n".repeat(rng.usize(1..4)),
        2 => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        3 => b"\x82\x03abc".to_vec(),
        4 => b"\x81\x05hello\x89\x00".to_vec(),
        5 => b"\x82\x03\x62ab".to_vec(),
        6 => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi".to_vec(),
    }
}

/// Text of a length in `lens`: a slice of one random text made once (generating it byte
/// by byte for every body would take most of the fuzzer's time in a debug build).
fn text(rng: &mut fastrand::Rng, lens: std::ops::Range<usize>) -> Vec<u8> {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| {
        let mut rng = fastrand::Rng::with_seed(0);
        (0..1 << 18)
            .map(|i| {
                if i % 61 == 60 {
                    b'\n'
                } else {
                    rng.alphanumeric() as u8
                }
            })
            .collect()
    });
    let len = rng.usize(lens);
    let start = rng.usize(..=text.len() - len);
    text[start..start + len].to_vec()
}

/// A body's pieces (each may start a send of its own) and its content type.
fn body(rng: &mut fastrand::Rng, shape: &Shape) -> (Vec<Vec<u8>>, &'static str, bool) {
    if !shape.adversarial {
        let pieces = rng.usize(1..4);
        return (
            (0..pieces).map(|_| text(rng, 0..3000)).collect(),
            "text/plain",
            false,
        );
    }
    match rng.u8(..32) {
        0..=5 => (vec![http_text(rng)], "message/http", false),
        6..=11 => {
            let mut parts = Vec::new();
            for _ in 0..rng.usize(1..4) {
                parts.push(b"--batch\r\nContent-Type: application/http\r\n\r\n".to_vec());
                parts.push(http_text(rng));
                parts.push(b"\r\n".to_vec());
            }
            parts.push(b"--batch--\r\n".to_vec());
            (parts, "multipart/mixed; boundary=batch", false)
        }
        12 => {
            // A large body of status lines: the kernel cuts it into 32 KiB messages, or
            // 64 KiB ones when it is a file sent by `sendfile`.
            let lines = rng.usize(1..(1 << 16));
            (
                vec![b"HTTP/1.1 200 O\r\n".repeat(lines)],
                "text/plain",
                rng.bool(),
            )
        }
        13 => {
            let file = http_text(rng).repeat(rng.usize(1..4000));
            (vec![file], "message/http", true)
        }
        _ => {
            let pieces = rng.usize(1..6);
            (
                (0..pieces)
                    .map(|_| {
                        if rng.bool() {
                            lookalike(rng)
                        } else {
                            text(rng, 0..200)
                        }
                    })
                    .collect(),
                "application/octet-stream",
                false,
            )
        }
    }
}

/// The response to `request`; `closing` is set when it says `Connection: close`.
fn response(rng: &mut fastrand::Rng, shape: &Shape, request: &Request) -> (Unit, bool) {
    let status = STATUSES[rng.usize(..STATUSES.len())];
    let version = if rng.u8(..10) == 0 { 0 } else { 1 };
    let reason = if shape.clean {
        b"OK"
    } else {
        REASONS[rng.usize(..REASONS.len())]
    };
    let (pieces, content_type, sendfile) = body(rng, shape);
    let has_body = request.method != Method::Head && status != 204 && status != 304;
    let chunked = version == 1 && rng.u8(..3) == 0;
    let mut fields = vec![
        field("Date", "Tue, 15 Nov 1994 08:12:31 GMT"),
        field("Server", "fuzz/1.0"),
        field("Content-Type", content_type),
    ];
    let mut body_segments = Vec::new();
    if chunked {
        fields.push(field("Transfer-Encoding", "chunked"));
        for piece in pieces.into_iter().filter(|piece| !piece.is_empty()) {
            body_segments.push(format!("{:x}\r\n", piece.len()).into_bytes());
            body_segments.push(piece);
            body_segments.push(b"\r\n".to_vec());
        }
        body_segments.push(b"0\r\n\r\n".to_vec());
    } else {
        let length: usize = pieces.iter().map(Vec::len).sum();
        if status != 204 {
            fields.push(field("Content-Length", length.to_string()));
        }
        body_segments = pieces;
    }
    let closing = rng.u8(..16) == 0;
    if closing {
        fields.push(field("Connection", "close"));
    }
    match rng.u8(..4) {
        0 => fields.push(field("Connection", "keep-alive")),
        1 if !shape.clean => {
            fields.push(field("X-Empty", ""));
            fields.push(field("X-Obs", b"caf\xe9\tau lait"));
        }
        _ => {}
    }
    // Heads near and above the judged window.
    if rng.u8(..10) == 0 {
        let target = rng.usize(HEAD_MAX as usize - 120..HEAD_MAX as usize + 80);
        let so_far: usize = fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + 40;
        fields.push(field("X-Pad", vec![b'p'; target.saturating_sub(so_far)]));
    }
    let (eol, odd): (&[u8], _) = if shape.adversarial && rng.u8(..6) == 0 {
        match rng.u8(..3) {
            0 => (b"\n", None),
            _ => (b"\r\n", Some(rng.usize(..2 * fields.len()))),
        }
    } else {
        (b"\r\n", None)
    };
    let (head_bytes, head) = head(version, status, reason, &fields, eol, odd);
    let mut segments = Vec::new();
    if shape.adversarial && rng.u8(..8) == 0 {
        // A head written in two sends.
        let cut = rng.usize(1..head_bytes.len());
        segments.push(head_bytes[..cut].to_vec());
        segments.push(head_bytes[cut..].to_vec());
    } else {
        segments.push(head_bytes);
    }
    let head_segments = segments.len();
    if has_body {
        segments.extend(body_segments);
    }
    let sendfile_from =
        (sendfile && has_body && segments.len() > head_segments).then_some(head_segments);
    let unit = Unit {
        segments,
        heads: vec![(0, head)],
        sendfile_from,
        ..Unit::default()
    };
    (unit, closing)
}

/// An interim response (`100 Continue`, `103 Early Hints`).
fn interim(status: u16) -> Unit {
    let (reason, fields) = if status == 100 {
        (&b"Continue"[..], vec![])
    } else {
        (
            &b"Early Hints"[..],
            vec![field("Link", "</style.css>; rel=preload; as=style")],
        )
    };
    let (bytes, head) = head(1, status, reason, &fields, b"\r\n", None);
    Unit {
        segments: vec![bytes],
        heads: vec![(0, head)],
        ..Unit::default()
    }
}

// --- Websocket frames and binary protocols -------------------------------------------

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first];
    match payload.len() {
        len @ 0..=125 => bytes.push(len as u8),
        len @ 126..=0xffff => {
            bytes.push(126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            bytes.push(127);
            bytes.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(payload);
    bytes
}

/// A websocket message of the server: one or more frames, each written whole or in
/// pieces.
fn websocket_unit(rng: &mut fastrand::Rng, shape: &Shape) -> Unit {
    let payload = |rng: &mut fastrand::Rng| -> Vec<u8> {
        let len = match rng.u8(..8) {
            0 => rng.usize(126..2000),
            1 if shape.adversarial && rng.u8(..8) == 0 => rng.usize(0x1_0000..0x2_0000),
            _ => rng.usize(0..126),
        };
        let mut bytes = text(rng, len..len + 1);
        if shape.adversarial && rng.bool() && len > 0 {
            // Frame-shaped or head-shaped bytes inside the payload.
            let look = lookalike(rng);
            let at = rng.usize(..len);
            bytes.splice(at..at, look);
        }
        bytes
    };
    let frames: Vec<Vec<u8>> = match rng.u8(..6) {
        0 => vec![frame(0x89, &text(rng, 0..20))],
        1 => vec![frame(0x8a, &[])],
        2 => {
            // Fragmented, maybe with a ping between the fragments.
            let opcode = 1 + rng.u8(..2);
            let count = rng.usize(2..5);
            let mut frames = Vec::new();
            for i in 0..count {
                let fin = if i + 1 == count { 0x80 } else { 0 };
                let op = if i == 0 { opcode } else { 0 };
                frames.push(frame(fin | op, &payload(rng)));
                if i + 1 < count && rng.u8(..3) == 0 {
                    frames.push(frame(0x89, b"hb"));
                }
            }
            frames
        }
        _ => {
            let rsv1 = if rng.u8(..4) == 0 { 0x40 } else { 0 };
            vec![frame(0x80 | rsv1 | (1 + rng.u8(..2)), &payload(rng))]
        }
    };
    let mut unit = Unit::default();
    let mut at = 0;
    for frame in frames {
        if rng.u8(..4) == 0 && frame.len() > 2 {
            // Written in pieces: the header alone, the payload in parts.
            let mut cut = 0;
            while cut < frame.len() {
                let end = (cut + rng.usize(1..=frame.len() - cut)).min(frame.len());
                unit.segments.push(frame[cut..end].to_vec());
                cut = end;
            }
        } else {
            unit.segments.push(frame.clone());
        }
        at += frame.len();
        unit.frame_ends.push(at);
    }
    unit
}

/// One record of a binary protocol, and the size of the request it answers.
fn binary_unit(rng: &mut fastrand::Rng, protocol: u8, shape: &Shape) -> (Unit, usize) {
    let mut segments: Vec<Vec<u8>> = match protocol {
        // TLV: tag, length, value. `\x82\x03abc` has a websocket frame's shape.
        0 => {
            let value = text(rng, 0..100);
            vec![vec![0x80 | rng.u8(..4), value.len() as u8], value]
        }
        // CBOR: an array of an integer and a text string.
        1 => vec![b"\x82\x03\x62ab".to_vec()],
        // RESP: a status, an integer, or a bulk string (maybe holding an HTTP response).
        2 => match rng.u8(..3) {
            0 => vec![b"+OK\r\n".to_vec()],
            1 => vec![b":1000\r\n".to_vec()],
            _ => {
                let value = if shape.adversarial {
                    http_text(rng)
                } else {
                    text(rng, 40..41)
                };
                vec![
                    format!("${}\r\n", value.len()).into_bytes(),
                    value,
                    b"\r\n".to_vec(),
                ]
            }
        },
        // TLS application data records.
        3 => {
            let payload = text(rng, 16..300);
            let mut header = vec![0x17, 0x03, 0x03];
            header.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            vec![header, payload]
        }
        // HTTP/2: a HEADERS frame, a DATA frame whose payload may be HTTP/1 text.
        _ => {
            let data = if shape.adversarial {
                http_text(rng)
            } else {
                text(rng, 30..31)
            };
            let frame = |kind: u8, payload: &[u8]| {
                let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
                bytes.extend_from_slice(&[kind, 0x04, 0, 0, 0, 1]);
                bytes
            };
            vec![frame(1, b"\x88"), b"\x88".to_vec(), frame(0, &data), data]
        }
    };
    if shape.adversarial && rng.u8(..4) == 0 {
        segments.push(lookalike(rng));
    }
    let request = rng.usize(5..200);
    (
        Unit {
            segments,
            ..Unit::default()
        },
        request,
    )
}

// --- Connections ----------------------------------------------------------------------

/// A whole connection's output as `shape` says.
fn generate(rng: &mut fastrand::Rng, shape: &Shape) -> Stream {
    let mut stream = Stream::new(rng, shape);
    let s = &mut stream;
    let split = |rng: &mut fastrand::Rng| rng.u8(..=16);
    match shape.protocol {
        Protocol::Http | Protocol::Upgrade => {
            'rounds: for _ in 0..rng.usize(1..10) {
                let batch = if shape.pipelining && rng.bool() {
                    rng.usize(2..5)
                } else {
                    1
                };
                if batch == 1 || !shape.slow_acks {
                    s.ack_all();
                } else {
                    s.ack_some(rng);
                }
                let requests: Vec<Request> = (0..batch)
                    .map(|_| Request::random(rng, shape, batch == 1))
                    .collect();
                // The first request arrives now, the others of the batch now or later.
                let first = s.sent;
                s.client_sends(requests.iter().map(Request::len).sum());
                let now = if rng.bool() {
                    s.sent
                } else {
                    first + requests[0].len()
                };
                let mut end = first;
                for (i, request) in requests.iter().enumerate() {
                    let head_end = end + request.head;
                    end += request.len();
                    if request.expect_continue {
                        s.arrive_to(head_end);
                        s.read_to(head_end);
                        s.write_unit(rng, interim(100), 0);
                        s.ack_all();
                        s.arrive_to(end);
                        s.read_to(end);
                    } else if shape.read_inside && request.body > 0 && rng.bool() {
                        // The server answers before it reads the request's body.
                        s.arrive_to(end.max(now));
                        s.read_to(head_end);
                        s.owed_read = Some(end);
                    } else {
                        s.arrive_to(end.max(if i == 0 { now } else { end }));
                        let upto = if rng.bool() { end } else { s.arrived };
                        s.read_to(upto);
                    }
                    if request.upgrade {
                        let (bytes, head) = head(
                            1,
                            101,
                            b"Switching Protocols",
                            &[
                                field("Upgrade", "websocket"),
                                field("Connection", "Upgrade"),
                                field("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                            ],
                            b"\r\n",
                            None,
                        );
                        let from = s.out.len() + bytes.len();
                        let mut unit = websocket_unit(rng, shape);
                        unit.frame_ends
                            .iter_mut()
                            .for_each(|end| *end += bytes.len());
                        if rng.bool() {
                            unit.segments.clear();
                            unit.frame_ends.clear();
                        }
                        unit.segments.insert(0, bytes);
                        unit.heads.push((0, head));
                        s.websocket_from = Some(from);
                        let split = split(rng);
                        s.write_unit(rng, unit, split);
                        websocket_phase(rng, s, shape);
                        break 'rounds;
                    }
                    // A 103 before the final response, with no read between: the final
                    // response is no candidate.
                    if rng.u8(..if shape.clean { 240 } else { 12 }) == 0 {
                        s.write_unit(rng, interim(103), 0);
                    }
                    let (unit, closing) = response(rng, shape, request);
                    let split = if shape.clean {
                        rng.u8(..2) * 16
                    } else {
                        split(rng)
                    };
                    s.write_unit(rng, unit, split);
                    if closing {
                        // `Connection: close`: the server closes after it.
                        break 'rounds;
                    }
                }
            }
        }
        Protocol::Websocket => {
            s.websocket_from = Some(0);
            websocket_phase(rng, s, shape);
        }
        Protocol::Binary => {
            let protocol = rng.u8(..5);
            for _ in 0..rng.usize(1..10) {
                let batch = if shape.pipelining { rng.usize(1..4) } else { 1 };
                if batch == 1 || !shape.slow_acks {
                    s.ack_all();
                }
                let units: Vec<(Unit, usize)> = (0..batch)
                    .map(|_| binary_unit(rng, protocol, shape))
                    .collect();
                let mut end = s.sent;
                s.client_sends(units.iter().map(|(_, request)| request).sum());
                for (unit, request) in units {
                    end += request;
                    s.arrive_to(end);
                    s.read_to(if rng.bool() { end } else { s.arrived });
                    let split = split(rng);
                    s.write_unit(rng, unit, split);
                }
            }
        }
    }
    stream
}

/// Websocket traffic both ways: the server's messages, the client's frames arriving and
/// being read between them (and, full duplex, while a message is being written).
fn websocket_phase(rng: &mut fastrand::Rng, s: &mut Stream, shape: &Shape) {
    for _ in 0..rng.usize(1..12) {
        if rng.bool() {
            // A masked client frame: 2 + 4 bytes of header and its payload.
            s.client_sends(6 + rng.usize(0..120));
        }
        if rng.u8(..4) != 0 {
            s.ack_some(rng);
        }
        if s.sent > s.arrived && rng.bool() {
            s.arrive_to(s.sent);
        }
        if s.arrived > s.read && rng.u8(..4) != 0 {
            s.read_to(s.arrived);
        }
        let unit = websocket_unit(rng, shape);
        let split = rng.u8(..=16);
        s.write_unit(rng, unit, split);
    }
}

// --- The oracle -----------------------------------------------------------------------

/// A decision the oracle refuses.
#[derive(Debug)]
struct Wrong {
    message: usize,
    action: Action,
    why: String,
    finding: Option<Finding>,
}

/// Wrong decisions of a kind already reported, counted instead of failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finding {
    /// The message starts inside a unit (response, frame, record), and is a candidate
    /// because the server read after it had written part of that unit.
    ReadInsideUnit,
}

/// Checks `action`, decided for `stream.messages[index]`:
/// - `ConnectionClose { at }` only on a message that starts exactly where a final
///   (200-599) response head starts, the head written by RFC 9112's grammar, `at` its
///   status line's end, and `httparse` parsing the message's head whole with the same
///   status and length;
/// - `WebsocketClose { at }` only with `--websocket-close`, on a websocket (after a real
///   `101`, or upgraded before the stream), with `at` the message's length and the
///   message ending exactly where a frame ends;
/// - at most one of either per connection; after it, or after `LeaveAlone`, only `Pass`.
///
/// `Pass` and `LeaveAlone` are always allowed: they change no byte.
fn check(
    stream: &Stream,
    index: usize,
    action: Action,
    websocket_close: bool,
    done: Option<Action>,
) -> Result<(), String> {
    let message = &stream.messages[index];
    if let Some(done) = done {
        return if action == Action::Pass {
            Ok(())
        } else {
            Err(format!(
                "after {done:?}, the connection was decided on again"
            ))
        };
    }
    match action {
        Action::Pass | Action::LeaveAlone => Ok(()),
        Action::ConnectionClose { at } => {
            let Some(head) = stream.heads.get(&message.start) else {
                return Err("the message does not start a response head".into());
            };
            if !(200..=599).contains(&head.status) {
                return Err(format!("a {} head is not a final response", head.status));
            }
            if !head.grammatical {
                return Err("the head is off RFC 9112's grammar".into());
            }
            if at != head.status_line_end {
                return Err(format!(
                    "the status line ends at {}, not {at}",
                    head.status_line_end
                ));
            }
            let bytes = &stream.out[message.start..message.start + message.len];
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(bytes) {
                Ok(httparse::Status::Complete(len))
                    if len == head.len && response.code == Some(head.status) =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "httparse disagrees: {other:?}, code {:?}",
                    response.code
                )),
            }
        }
        Action::WebsocketClose { at } => {
            if !websocket_close {
                return Err("a close frame without --websocket-close".into());
            }
            if stream
                .websocket_from
                .is_none_or(|from| message.start < from)
            {
                return Err("not on a websocket".into());
            }
            let end = message.start + message.len;
            if at as usize != message.len {
                return Err(format!("not at the message's end ({})", message.len));
            }
            if stream.frame_ends.binary_search(&end).is_err() {
                return Err("the message does not end where a frame ends".into());
            }
            Ok(())
        }
    }
}

/// Runs `decide` on every message of `stream` from `arm` on, as the kernel program would
/// after the drain armed the connection there; the actions and the wrong decisions.
fn run(stream: &Stream, arm: usize, websocket_close: bool) -> (Vec<Action>, Vec<Wrong>) {
    let mut inspection = Inspection::default();
    let (mut actions, mut wrong) = (Vec::new(), Vec::new());
    let mut done = None;
    for index in arm..stream.messages.len() {
        let message = &stream.messages[index];
        let bytes = &stream.out[message.start..message.start + message.len];
        let action = decide(
            &mut inspection,
            Some(&message.seqs),
            websocket_close,
            &mut Bytes(bytes),
        );
        if let Err(why) = check(stream, index, action, websocket_close, done) {
            let inside = stream.unit_starts.binary_search(&message.start).is_err();
            wrong.push(Wrong {
                message: index,
                action,
                why,
                finding: (inside && message.read_inside_unit).then_some(Finding::ReadInsideUnit),
            });
        }
        if action != Action::Pass && done.is_none() {
            done = Some(action);
        }
        actions.push(action);
    }
    (actions, wrong)
}

/// The stream's messages up to `upto`, from `arm` (at most the last 12), for a failure.
fn describe(stream: &Stream, arm: usize, upto: usize, actions: &[Action]) -> String {
    let mut text = format!(
        "iss {} irs {}, {} bytes out, websocket from {:?}, armed at message {arm}\n",
        stream.iss,
        stream.irs,
        stream.out.len(),
        stream.websocket_from
    );
    for index in upto.saturating_sub(11).max(arm)..=upto {
        let message = &stream.messages[index];
        let bytes = &stream.out[message.start..message.start + message.len.min(120)];
        let truth = match stream.heads.get(&message.start) {
            Some(head) => format!("head {head:?}"),
            None if stream.unit_starts.binary_search(&message.start).is_ok() => "unit start".into(),
            None => "inside a unit".into(),
        };
        text += &format!(
            "  #{index} [{}..+{}] {:?} read inside unit: {}; {truth}; decided {:?}\n    {}\n",
            message.start,
            message.len,
            message.seqs,
            message.read_inside_unit,
            actions[index - arm],
            bytes.escape_ascii()
        );
    }
    text
}

// --- The fuzzer -----------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    streams: u64,
    messages: u64,
    connection_close: u64,
    websocket_close: u64,
    left_alone: u64,
    findings: u64,
    /// The known finding's decisions by protocol and action.
    finding_kinds: std::collections::BTreeMap<String, u64>,
    first_finding: Option<String>,
    /// Clean streams with three final responses after the arming point, and those of
    /// them closed at one of those three.
    recall_eligible: u64,
    recall_closed: u64,
}

/// Generates and checks one stream; `Err` with its description on a wrong decision
/// that is not a known finding.
fn fuzz_one(rng: &mut fastrand::Rng, tally: &mut Tally) -> Result<(), String> {
    let shape = Shape::random(rng);
    let stream = generate(rng, &shape);
    if stream.messages.is_empty() {
        return Ok(());
    }
    let arm = if rng.u8(..4) == 0 {
        0
    } else {
        rng.usize(..stream.messages.len())
    };
    let (actions, wrong) = run(&stream, arm, shape.websocket_close);
    tally.streams += 1;
    tally.messages += actions.len() as u64;
    for action in &actions {
        match action {
            Action::ConnectionClose { .. } => tally.connection_close += 1,
            Action::WebsocketClose { .. } => tally.websocket_close += 1,
            Action::LeaveAlone => tally.left_alone += 1,
            Action::Pass => {}
        }
    }
    for wrong in &wrong {
        let description = format!(
            "{shape:?}\nmessage #{}: {:?}: {}\n{}",
            wrong.message,
            wrong.action,
            wrong.why,
            describe(&stream, arm, wrong.message, &actions)
        );
        match wrong.finding {
            Some(Finding::ReadInsideUnit) => {
                tally.findings += 1;
                let action = format!("{:?}", wrong.action);
                let action = action.split(' ').next().unwrap_or_default();
                let kind = format!(
                    "{:?} {action}{}",
                    shape.protocol,
                    if shape.pipelining {
                        " (pipelining)"
                    } else {
                        ""
                    }
                );
                *tally.finding_kinds.entry(kind).or_default() += 1;
                tally.first_finding.get_or_insert(description);
            }
            None => return Err(description),
        }
    }
    if shape.clean {
        let armed_at = stream.messages[arm].start;
        let finals: Vec<usize> = stream
            .unit_starts
            .iter()
            .copied()
            .filter(|start| *start >= armed_at && stream.heads[start].status >= 200)
            .take(3)
            .collect();
        if finals.len() == 3 {
            tally.recall_eligible += 1;
            let closed = actions
                .iter()
                .zip(&stream.messages[arm..])
                .any(|(action, message)| {
                    matches!(action, Action::ConnectionClose { .. })
                        && finals.contains(&message.start)
                });
            tally.recall_closed += u64::from(closed);
        }
    }
    Ok(())
}

#[test]
fn every_decision_on_generated_connections_matches_the_model() {
    let budget = budget();
    let single = env_seed("DRAIN_FUZZ_STREAM");
    let seed = env_seed("DRAIN_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let mut seeds = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut index = 0u64;
    while single.is_none() && (!index.is_multiple_of(64) || started.elapsed() < budget)
        || single.is_some() && index == 0
    {
        let stream_seed = single.unwrap_or_else(|| seeds.u64(..));
        let mut rng = fastrand::Rng::with_seed(stream_seed);
        if let Err(description) = fuzz_one(&mut rng, &mut tally) {
            panic!(
                "wrong decision (DRAIN_FUZZ_SEED={seed}, stream #{index}, \
                 DRAIN_FUZZ_STREAM={stream_seed}):\n{description}"
            );
        }
        index += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let recall = tally.recall_closed as f64 / tally.recall_eligible.max(1) as f64;
    let _ = writeln!(
        std::io::stderr(),
        "differential: {} streams, {} messages in {elapsed:.1}s ({:.0} streams/s, {:.0} \
         messages/s); {} Connection: close, {} close frames, {} left alone; recall on clean \
         streams {:.2}% of {}; {} decisions of the known finding {:?} (seed {seed})",
        tally.streams,
        tally.messages,
        tally.streams as f64 / elapsed,
        tally.messages as f64 / elapsed,
        tally.connection_close,
        tally.websocket_close,
        tally.left_alone,
        recall * 100.0,
        tally.recall_eligible,
        tally.findings,
        tally.finding_kinds,
    );
    if let Some(first) = &tally.first_finding {
        let _ = writeln!(
            std::io::stderr(),
            "first decision of the known finding:\n{first}"
        );
    }
    if single.is_some() {
        return;
    }
    assert!(
        tally.findings * 20_000 <= tally.streams.max(20_000),
        "{} decisions of the known limit in {} streams: more than one in 20,000 (seed {seed})",
        tally.findings,
        tally.streams
    );
    assert!(
        tally.connection_close > 0 && tally.left_alone > 0 && tally.websocket_close > 0,
        "the generator reached too few decisions to prove anything (seed {seed})"
    );
    // A clean connection armed before three final responses has at least two proven
    // boundaries among them (the first write seen only sets the mark). Each misses only
    // when its head is longer than the judged window or follows a 103 with no read between:
    // in clean streams 1 head in 10 is padded to 904..1104 bytes and 1 in 240 follows a
    // 103, about 1 miss in 23, so both miss about once in 500 (measured: 99.8 to 99.97 %).
    // A floor of 95 % leaves room for that and fails a decision that stops asking.
    assert!(
        tally.recall_eligible < 50 || recall >= 0.95,
        "recall on clean streams {:.2}% of {} (seed {seed})",
        recall * 100.0,
        tally.recall_eligible
    );
}

// --- The cases -----------------------------------------------------------------

/// The decisions on `stream`'s messages from `arm` on, each one checked by the oracle.
fn decisions(stream: &Stream, arm: usize, websocket_close: bool) -> Vec<Action> {
    let (actions, wrong) = run(stream, arm, websocket_close);
    assert!(
        wrong.is_empty(),
        "{wrong:?}\n{}",
        describe(stream, arm, stream.messages.len() - 1, &actions)
    );
    actions
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const CLOSE_AFTER_STATUS_LINE: Action = Action::ConnectionClose { at: 17 };
const PASS: Action = Action::Pass;

fn passes(count: usize) -> Vec<Action> {
    vec![PASS; count]
}

#[test]
fn a_bare_lf_head_leaves_the_connection_alone_for_good() {
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    stream.ask(80);
    stream.write_pieces(
        &[b"HTTP/1.1 200 OK\nContent-Length: 14\n\nline1\r\nline2\r\n"],
        false,
    );
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    assert_eq!(
        decisions(&stream, 0, false),
        [PASS, Action::LeaveAlone, PASS]
    );
}

#[test]
fn a_megabyte_body_of_status_lines_cut_in_32_kib_messages_is_never_judged() {
    let body = b"HTTP/1.1 200 O\r\n".repeat(1 << 16);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.ack_between = true;
    stream.write_pieces(&[head.as_bytes(), &body], false);
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    assert_eq!(stream.messages.len(), 1 + 32 + 1);
    assert!(stream.messages[1..33].iter().all(|m| m.len == 32 << 10));
    // Armed with the head in flight (the run), or before it.
    let mut expected = passes(32);
    expected.push(CLOSE_AFTER_STATUS_LINE);
    assert_eq!(decisions(&stream, 1, false), expected);
    expected.insert(0, PASS);
    assert_eq!(decisions(&stream, 0, false), expected);
}

#[test]
fn a_sendfile_body_holding_responses_in_64_kib_messages_is_never_judged() {
    let file = OK_HELLO.repeat((1 << 20) / OK_HELLO.len() + 1);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: {}\r\n\r\n",
        file.len()
    );
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.ack_between = true;
    stream.write_pieces(&[head.as_bytes(), &file], true);
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    assert_eq!(stream.messages.len(), 1 + 17 + 1);
    assert!(stream.messages[1..17].iter().all(|m| m.len == 64 << 10));
    let mut expected = passes(1 + 17);
    expected.push(CLOSE_AFTER_STATUS_LINE);
    assert_eq!(decisions(&stream, 0, false), expected);
}

#[test]
fn a_message_http_body_in_its_own_send_gets_no_header() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: 44\r\n\r\n";
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.ack_between = true;
    stream.write_pieces(&[head, OK_HELLO], false);
    stream.ask(80);
    stream.write_pieces(&[head, OK_HELLO], false);
    assert_eq!(
        decisions(&stream, 0, false),
        [PASS, PASS, CLOSE_AFTER_STATUS_LINE, PASS]
    );
}

#[test]
fn multipart_application_http_parts_in_their_own_sends_get_no_header() {
    let part = b"--batch\r\nContent-Type: application/http\r\n\r\n";
    let pieces: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/mixed; boundary=batch\r\nContent-Length: 209\r\n\r\n",
        part,
        OK_HELLO,
        b"\r\n",
        part,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"\r\n",
        b"--batch--\r\n",
    ];
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.ack_between = true;
    stream.write_pieces(&pieces, false);
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    let mut expected = passes(8);
    expected.push(CLOSE_AFTER_STATUS_LINE);
    assert_eq!(decisions(&stream, 0, false), expected);
}

/// A request/response protocol whose records are `record`, three exchanges.
fn binary_exchanges(record: &[u8], declared_websocket: bool) -> Stream {
    let mut stream = Stream::scripted();
    if declared_websocket {
        stream.websocket_from = Some(0);
    }
    for _ in 0..3 {
        stream.ask(5);
        stream.write_pieces(&[record], false);
        if declared_websocket {
            stream.frame_ends.push(stream.out.len());
        }
    }
    stream
}

#[test]
fn binary_records_with_a_frames_shape_get_no_close_frame_by_default() {
    for record in [&b"\x82\x03abc"[..], b"\x82\x03\x62ab"] {
        let stream = binary_exchanges(record, false);
        assert_eq!(
            decisions(&stream, 0, false),
            [PASS, Action::LeaveAlone, PASS],
            "{record:?}"
        );
    }
}

/// The rule of `--websocket-close`: the user asserts that the port's non-HTTP
/// connections are websockets, so a record with a frame's shape is taken for a frame. The
/// oracle accepts the close frame only because this test declares the connection one.
#[test]
fn with_websocket_close_the_port_s_frame_shaped_writes_are_taken_for_frames() {
    let stream = binary_exchanges(b"\x82\x03abc", true);
    assert_eq!(
        decisions(&stream, 0, true),
        [PASS, Action::WebsocketClose { at: 5 }, PASS]
    );
}

#[test]
fn a_switch_of_protocols_seen_by_the_program_leaves_the_connection_alone() {
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    stream.ask(200);
    stream.write_pieces(
        &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"],
        false,
    );
    stream.websocket_from = Some(stream.out.len());
    for _ in 0..2 {
        stream.ask(11);
        stream.write_pieces(&[b"\x81\x05hello"], false);
        stream.frame_ends.push(stream.out.len());
    }
    assert_eq!(
        decisions(&stream, 0, true),
        [PASS, Action::LeaveAlone, PASS, PASS]
    );
}

#[test]
fn a_websocket_armed_after_its_upgrade_gets_a_close_frame_after_an_answer_only_when_asked() {
    let mut stream = Stream::scripted();
    stream.websocket_from = Some(0);
    for _ in 0..3 {
        stream.ask(11);
        stream.write_pieces(&[b"\x81\x05hello\x8a\x00"], false);
        stream
            .frame_ends
            .extend([stream.out.len() - 2, stream.out.len()]);
    }
    assert_eq!(
        decisions(&stream, 0, true),
        [PASS, Action::WebsocketClose { at: 9 }, PASS]
    );
    assert_eq!(
        decisions(&stream, 0, false),
        [PASS, Action::LeaveAlone, PASS]
    );
}

#[test]
fn pipelined_requests_read_together_give_one_candidate_the_first_response() {
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    // Two requests arrive and are read at once; both answers follow with no read between.
    stream.ask(160);
    stream.write_pieces(&[OK_HELLO], false);
    stream.write_pieces(&[OK_HELLO], false);
    assert_eq!(
        decisions(&stream, 0, false),
        [PASS, CLOSE_AFTER_STATUS_LINE, PASS]
    );
    // Armed between them: the second answer only sets the mark.
    assert_eq!(decisions(&stream, 2, false), [PASS]);
}

// --- Reads inside a unit -------------------------------------------------------------
//
// A read between two writes of one response (or frame, or record) of input that was
// already waiting at the earlier write, or that the client sent while output was in
// flight, makes no candidate: each test holds the decisions the rules give.

#[test]
fn a_pipelined_request_read_between_a_head_and_its_body_gets_no_header_into_the_body() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: 44\r\n\r\n";
    let mut stream = Stream::scripted();
    stream.ask(80);
    stream.write_pieces(&[OK_HELLO], false);
    // The client pipelines its next request before it has acknowledged the answer; the
    // server reads it and writes the head, then the client's third request arrives and
    // the server reads it ahead while the head is acknowledged, then writes the body.
    stream.client_sends(80);
    stream.arrive_to(stream.sent);
    stream.read_to(stream.arrived);
    stream.client_sends(80);
    stream.arrive_to(stream.sent);
    stream.owed_read = Some(stream.arrived);
    stream.ack_between = true;
    stream.write_pieces(&[head, OK_HELLO], false);
    // The head finds the client's request arrived while the answer was unacknowledged:
    // the client pipelines, and the connection is left alone before its body.
    assert_eq!(
        decisions(&stream, 0, false),
        [PASS, Action::LeaveAlone, PASS]
    );
}

#[test]
fn a_request_body_read_after_the_response_head_gets_no_header_into_the_body() {
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: 44\r\n\r\n";
    let mut stream = Stream::scripted();
    // A POST of 80 + 4000 bytes has arrived; the server reads the head, answers with its
    // head (the first write the drain sees), reads the body, and writes its body.
    stream.client_sends(4080);
    stream.arrive_to(4080);
    stream.read_to(80);
    stream.owed_read = Some(4080);
    stream.ack_between = true;
    stream.write_pieces(&[head, OK_HELLO], false);
    assert_eq!(decisions(&stream, 0, false), [PASS, PASS]);
}

#[test]
fn a_client_frame_read_inside_a_long_frame_gets_no_close_frame_into_its_payload() {
    let mut payload = vec![b'x'; 200];
    payload[50..57].copy_from_slice(b"\x81\x05hello");
    let frame = frame(0x82, &payload);
    let mut stream = Stream::scripted();
    stream.websocket_from = Some(0);
    // The server writes a 200-byte frame in three pieces; between the first two, the
    // client's ping arrives, the server reads it, and the first piece is acknowledged.
    stream.client_sends(6);
    stream.arrive_to(6);
    stream.owed_read = Some(6);
    stream.ack_between = true;
    stream.write_pieces(&[&frame[..54], &frame[54..61], &frame[61..]], false);
    stream.frame_ends.push(stream.out.len());
    assert_eq!(decisions(&stream, 0, true), [PASS, PASS, PASS]);
}

#[test]
fn a_client_frame_read_inside_a_long_frame_gets_no_header_into_its_payload_by_default() {
    let mut payload = vec![b'x'; 200];
    payload[50..50 + OK_HELLO.len()].copy_from_slice(OK_HELLO);
    let frame = frame(0x81, &payload);
    let mut stream = Stream::scripted();
    stream.websocket_from = Some(0);
    stream.client_sends(6);
    stream.arrive_to(6);
    stream.owed_read = Some(6);
    stream.ack_between = true;
    stream.write_pieces(&[&frame[..54], &frame[54..]], false);
    stream.frame_ends.push(stream.out.len());
    // Today, with the defaults: [Pass, ConnectionClose { at: 17 }] inside the payload.
    assert_eq!(decisions(&stream, 0, false), [PASS, PASS]);
}

#[test]
fn a_redis_bulk_reply_holding_a_response_gets_no_header_when_a_command_is_read_inside_it() {
    let mut stream = Stream::scripted();
    // GET reply written as its length line, then the value (an HTTP response a cache
    // keeps); the client's next pipelined command is read between the two.
    stream.client_sends(40);
    stream.arrive_to(40);
    stream.read_to(20);
    stream.owed_read = Some(40);
    stream.ack_between = true;
    stream.write_pieces(&[b"$44\r\n", OK_HELLO, b"\r\n"], false);
    assert_eq!(decisions(&stream, 0, false), [PASS, PASS, PASS]);
}

//! A drain changes no byte a server sends, except one `Connection: close\r\n` right after
//! the status line of a response head that starts a write at a proven boundary (and,
//! with `--websocket-close` only, one websocket close frame after whole server frames).
//!
//! The scripted corpus: one keep-alive connection per case in a private netns, its
//! server a thread that reads each request and then writes the case's pieces, each its
//! own `send()` or `sendfile()`, with pauses between them. Round 0 is in flight when
//! the drain starts (the server holds its answer about 2.5 s, so the drain arms the
//! connection); later rounds carry the shapes under test. The client compares what it
//! read with what the server wrote: equal, or equal but for the one header inserted
//! at the end of the status line of a write that the case marks as a response head,
//! that follows a read and holds a whole RFC 9112 head. Each case also says where the
//! header must come (a clean exchange) or that it must not come at all, and the drain's
//! report must count what the clients saw.
//!
//! Then real servers under a drain with the defaults: nginx serving files by
//! `sendfile`, a Go net/http server, a Python `websockets` server and Redis, each
//! compared byte for byte.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use drain_tests::{
    bind_listener, nginx, spawn_drainctl, systemd::require_tool, ChildGuard, Drainctl,
    DrainctlOutput, EventReader, Netns,
};

const SECOND: Duration = Duration::from_secs(1);
const HEADER: &[u8] = b"Connection: close\r\n";
/// A websocket close frame from a server: status 1001, going away.
const GOING_AWAY: &[u8] = b"\x88\x02\x03\xe9";
const ADDR: &str = "127.0.0.1:8080";
/// The longest response head the program rewrites (its bound, CRLF CRLF included).
const MAX_HEAD: usize = 1024;
/// The pause between two writes of the server, so that each stays a message of its own.
const PIECE_GAP: Duration = Duration::from_millis(20);
/// Long enough for the client's delayed ACK of the previous write to have come.
const ACKED: Duration = Duration::from_millis(250);
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------
// The scripted corpus.

/// What the server of a case does, in order.
#[derive(Clone)]
enum Step {
    /// Reads exactly this many bytes of what the client sent.
    Read(usize),
    /// One `send()`. `head`: the write starts a response (the test knows its script).
    Send {
        bytes: Vec<u8>,
        head: bool,
    },
    /// One `sendfile()` of these bytes, from a file of their own.
    Sendfile(Vec<u8>),
    Pause(Duration),
    /// Waits here until the drain has been running for a second (round 0 only).
    Armed,
}

/// One exchange: the client sends `requests` (each its own write), the server runs
/// `steps`, the client reads what they wrote.
#[derive(Clone)]
struct Round {
    requests: Vec<Vec<u8>>,
    steps: Vec<Step>,
}

/// Where a case's one allowed addition must be (round, and write within the round).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Header { round: usize, write: usize },
    GoingAway { round: usize, write: usize },
    Untouched,
}

struct Case {
    name: &'static str,
    rounds: Vec<Round>,
    expect: Expect,
}

/// What the client found added to the server's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Insertion {
    Header { round: usize, write: usize },
    GoingAway { round: usize, write: usize },
}

fn get() -> Vec<u8> {
    b"GET /item HTTP/1.1\r\nHost: corpus\r\n\r\n".to_vec()
}

fn ok(body: &[u8]) -> Vec<u8> {
    [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        body,
    ]
    .concat()
}

/// A write that starts a response.
fn head(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send {
        bytes: bytes.as_ref().to_vec(),
        head: true,
    }
}

/// A write that continues one (a body, or any other protocol's message).
fn more(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send {
        bytes: bytes.as_ref().to_vec(),
        head: false,
    }
}

fn file(bytes: impl AsRef<[u8]>) -> Step {
    Step::Sendfile(bytes.as_ref().to_vec())
}

/// `request` answered by `writes`, a pause between two writes.
fn answer_to(request: &[u8], writes: Vec<Step>) -> Round {
    let mut steps = vec![Step::Read(request.len())];
    for (i, write) in writes.into_iter().enumerate() {
        if i > 0 {
            steps.push(Step::Pause(PIECE_GAP));
        }
        steps.push(write);
    }
    Round {
        requests: vec![request.to_vec()],
        steps,
    }
}

fn answer(writes: Vec<Step>) -> Round {
    answer_to(&get(), writes)
}

/// Round 0: the request is read, the answer waits until the drain armed the connection.
fn in_flight(writes: Vec<Step>) -> Round {
    let mut round = answer(writes);
    round.steps.insert(1, Step::Armed);
    round
}

fn plain() -> Round {
    answer(vec![head(ok(b"hello"))])
}

/// An in-flight round 0, then `round`, then a plain exchange, expecting `expect`.
fn probe(name: &'static str, round: Round, expect: Expect) -> Case {
    Case {
        name,
        rounds: vec![in_flight(vec![head(ok(b"hello"))]), round, plain()],
        expect,
    }
}

/// Where the first clean response after the in-flight one gets the header.
const SECOND_ROUND: Expect = Expect::Header { round: 1, write: 0 };
const THIRD_ROUND: Expect = Expect::Header { round: 2, write: 0 };

/// A 1 MiB body of `unit` repeated; both units divide 32 KiB and 64 KiB, so wherever
/// the kernel cuts a send or a sendfile into messages at those sizes, a cut falls on
/// a unit's start.
fn repeated(unit: &[u8]) -> Vec<u8> {
    assert_eq!(32768 % unit.len(), 0);
    unit.repeat(MIB / unit.len())
}

/// 16 bytes: a status line.
const STATUS_LINE: &[u8] = b"HTTP/1.1 200 O\r\n";
/// 32 bytes: a whole, valid response head.
const WHOLE_HEAD: &[u8] = b"HTTP/1.1 200 O\r\nA: bcdefghij\r\n\r\n";

fn head_for(length: usize, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\n{extra}Content-Length: {length}\r\n\r\n").into_bytes()
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An HTTP response's text, as the body of a `message/http` response.
const INNER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Inner: yes\r\n\r\ninner";

fn message_http_head() -> Vec<u8> {
    head_for(INNER.len(), "Content-Type: message/http\r\n")
}

/// A `multipart/mixed` batch of `application/http` parts, each part's HTTP message its
/// own write.
fn multipart_writes() -> Vec<Step> {
    let parts: Vec<&[u8]> = vec![
        b"--batch\r\nContent-Type: application/http\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"\r\n--batch\r\nContent-Type: application/http\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        b"\r\n--batch--\r\n",
    ];
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let mut writes = vec![head(head_for(
        length,
        "Content-Type: multipart/mixed; boundary=batch\r\n",
    ))];
    writes.extend(parts.into_iter().map(more));
    writes
}

/// A chunked response whose chunk data (in writes of their own) are HTTP heads.
fn chunked_heads() -> Vec<Step> {
    let data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    vec![
        head(format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            data.len()
        )),
        more(data),
        more(format!("\r\n{:x}\r\n", data.len())),
        more(data),
        more("\r\n0\r\n\r\n"),
    ]
}

/// Pseudo-random bytes (xorshift), the same on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A client's masked websocket frame.
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

fn upgrade_request() -> Vec<u8> {
    b"GET /chat HTTP/1.1\r\nHost: corpus\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Whole, valid heads, each a write of its own at the boundary after the in-flight
/// round: each gets the header.
const CLEAN_HEADS: &[(&str, &[u8])] = &[
    (
        "204 No Content",
        b"HTTP/1.1 204 No Content\r\nX-Id: 7\r\n\r\n",
    ),
    (
        "304 Not Modified",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n",
    ),
    (
        "an existing Connection: keep-alive header",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello",
    ),
    (
        "an existing Connection: close header",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    ),
    ("HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (
        "a reason phrase with spaces and a tab",
        b"HTTP/1.1 404 Not\tQuite Found\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "an empty reason phrase",
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "status 599",
        b"HTTP/1.1 599 Custom\r\nContent-Length: 0\r\n\r\n",
    ),
    ("a head without header fields", b"HTTP/1.1 200 OK\r\n\r\n"),
];

/// Heads RFC 9112's grammar refuses, each a write of its own at the boundary after the
/// in-flight round: the connection is left alone for good, so the clean exchange after
/// them does not get the header either.
const REFUSED_HEADS: &[(&str, &[u8])] = &[
    (
        "the issue's bare-LF head",
        b"HTTP/1.1 200 OK\nContent-Length: 14\n\nline1\r\nline2\r\n",
    ),
    (
        "HTTP/1.1 200 OK ended by LF only",
        b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a bare LF inside the header block",
        b"HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n",
    ),
    (
        "an obs-fold header line",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a header field without a colon",
        b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a space before a header field's colon",
        b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
    ),
    (
        "a control character in a header value",
        b"HTTP/1.1 200 OK\r\nX-Odd: a\x01b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a lowercase http/1.1",
        b"http/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("HTTP/2 as a status line", b"HTTP/2 200\r\n\r\n"),
    ("HTTP/1.2", b"HTTP/1.2 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (
        "a two-digit status",
        b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    ),
    ("status 099", b"HTTP/1.1 099 Odd\r\n\r\n"),
    (
        "status 600",
        b"HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "a CRLF before the status line",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ),
];

/// The corpus under the defaults: every case with where the header must come, or that
/// it must not come.
fn cases() -> Vec<Case> {
    let head_1000 = padded_head(1000);
    let head_1100 = padded_head(1100);
    let pipelined = [get(), get()].concat();
    let mut cases = vec![
        // Clean exchanges: the header must come, in the response after the in-flight one.
        Case {
            name: "one write per response, several responses",
            rounds: vec![in_flight(vec![head(ok(b"hello"))]), plain(), plain(), plain()],
            expect: SECOND_ROUND,
        },
        probe(
            "head and body in separate writes",
            answer(vec![head(head_for(5, "")), more("hello")]),
            SECOND_ROUND,
        ),
        probe(
            "a 404 head then its body in small writes",
            answer(vec![
                head("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n"),
                more("not "),
                more("found"),
            ]),
            SECOND_ROUND,
        ),
        probe(
            "a HEAD response (a length, no body)",
            answer_to(
                b"HEAD /item HTTP/1.1\r\nHost: corpus\r\n\r\n",
                vec![head(head_for(1234, "Content-Type: text/html\r\n"))],
            ),
            SECOND_ROUND,
        ),
        probe(
            "a chunked body in several writes",
            answer(vec![
                head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                more("5\r\nhello\r\n"),
                more("0\r\n\r\n"),
            ]),
            SECOND_ROUND,
        ),
        probe(
            "a head of 1000 bytes",
            answer(vec![head(&head_1000)]),
            SECOND_ROUND,
        ),
        probe(
            "the head written 300 ms after the request was read",
            Round {
                requests: vec![get()],
                steps: vec![
                    Step::Read(get().len()),
                    Step::Pause(Duration::from_millis(300)),
                    head(ok(b"late")),
                ],
            },
            SECOND_ROUND,
        ),
        probe(
            "the request arrives in two writes",
            Round {
                requests: vec![get()[..10].to_vec(), get()[10..].to_vec()],
                steps: vec![Step::Read(get().len()), head(ok(b"whole"))],
            },
            SECOND_ROUND,
        ),
        probe(
            "pipelined responses in one write",
            answer_to(&pipelined, vec![head([ok(b"a"), ok(b"b")].concat())]),
            SECOND_ROUND,
        ),
        probe(
            "pipelined responses in separate writes",
            answer_to(&pipelined, vec![head(ok(b"a")), head(ok(b"b"))]),
            SECOND_ROUND,
        ),
        probe(
            // The first answer is written while the second request waits unread: the
            // second answer, written after reading it, is no boundary either (what it
            // read was waiting at the previous write); the next clean exchange is.
            "a response written before the next pipelined request was read",
            Round {
                requests: vec![pipelined.clone()],
                steps: vec![
                    Step::Read(get().len()),
                    head(ok(b"a")),
                    Step::Pause(ACKED),
                    Step::Read(get().len()),
                    head(ok(b"b")),
                ],
            },
            THIRD_ROUND,
        ),
        // Bodies that look like HTTP responses; the head before them is at a boundary
        // in round 1 only (round 0's first write is never rewritten).
        Case {
            name: "a message/http body in its own send",
            rounds: vec![
                in_flight(vec![head(message_http_head()), more(INNER)]),
                answer(vec![head(message_http_head()), more(INNER)]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        Case {
            name: "a message/http body by sendfile",
            rounds: vec![
                in_flight(vec![head(message_http_head()), file(INNER)]),
                answer(vec![head(message_http_head()), file(INNER)]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        probe(
            "a message/http body after a 100 Continue",
            answer(vec![head(CONTINUE), head(message_http_head()), more(INNER)]),
            THIRD_ROUND,
        ),
        Case {
            name: "a multipart/mixed batch of application/http parts",
            rounds: vec![
                in_flight(multipart_writes()),
                answer(multipart_writes()),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        Case {
            name: "a chunked body whose chunks are HTTP heads",
            rounds: vec![
                in_flight(chunked_heads()),
                answer(chunked_heads()),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        // The issue's case: the program first sees the connection in the middle of a
        // response; the 1 MiB send reaches it as 32 KiB messages.
        first_sight(
            "head sent before arming, then 1 MiB of status lines in one send",
            head_for(MIB, ""),
            vec![more(repeated(STATUS_LINE))],
        ),
        Case {
            name: "a 1 MiB body of status lines by sendfile",
            rounds: vec![
                in_flight(vec![head(head_for(MIB, "")), file(repeated(STATUS_LINE))]),
                answer(vec![head(head_for(MIB, "")), file(repeated(STATUS_LINE))]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        probe(
            "a 1 MiB body of whole heads in one send, after a 100 Continue",
            answer(vec![
                head(CONTINUE),
                head(head_for(MIB, "")),
                more(repeated(WHOLE_HEAD)),
            ]),
            THIRD_ROUND,
        ),
        probe(
            "a 1 MiB body of whole heads by sendfile, after a 100 Continue",
            answer(vec![
                head(CONTINUE),
                head(head_for(MIB, "")),
                file(repeated(WHOLE_HEAD)),
            ]),
            THIRD_ROUND,
        ),
        Case {
            name: "a CBOR body that has a websocket frame's shape",
            rounds: vec![
                in_flight(vec![
                    head(head_for(5, "Content-Type: application/cbor\r\n")),
                    more(b"\x82\x03\x62ab"),
                ]),
                answer(vec![
                    head(head_for(5, "Content-Type: application/cbor\r\n")),
                    more(b"\x82\x03\x62ab"),
                ]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
        // Interim responses: never rewritten; the final one after them is not at a
        // boundary (no read in between), so the next exchange gets the header.
        probe(
            "100 Continue, then the final response in its own write",
            answer(vec![head(CONTINUE), head(ok(b"done"))]),
            THIRD_ROUND,
        ),
        probe(
            "100 Continue and the final response in one write",
            answer(vec![head([CONTINUE, &ok(b"done")].concat())]),
            THIRD_ROUND,
        ),
        probe(
            "103 Early Hints, then the final response",
            answer(vec![
                head("HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"),
                head(ok(b"done")),
            ]),
            THIRD_ROUND,
        ),
        Case {
            name: "101 Switching Protocols, then websocket frames",
            rounds: vec![
                in_flight(vec![head(ok(b"hello"))]),
                answer_to(
                    &upgrade_request(),
                    vec![head(SWITCHING), more(b"\x81\x05hello")],
                ),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x04pong")]),
                answer_to(&masked_frame(b"more"), vec![more(b"\x82\x03abc\x8a\x00")]),
            ],
            expect: Expect::Untouched,
        },
        // Heads that do not end within the write (or within 1024 bytes): nothing is
        // added to them, and the clean exchange after them gets the header.
        probe(
            "the status line split over two writes",
            answer(vec![head("HTTP/1.1 200 O"), more("K\r\nContent-Length: 2\r\n\r\nab")]),
            THIRD_ROUND,
        ),
        probe(
            "the status line alone in its write",
            answer(vec![head("HTTP/1.1 200 OK\r\n"), more("Content-Length: 2\r\n\r\nab")]),
            THIRD_ROUND,
        ),
        probe(
            "the head cut inside a header field",
            answer(vec![head("HTTP/1.1 200 OK\r\nContent-Le"), more("ngth: 2\r\n\r\nab")]),
            THIRD_ROUND,
        ),
        probe(
            "a head over 1024 bytes",
            answer(vec![head(&head_1100)]),
            THIRD_ROUND,
        ),
        // Other protocols at a boundary: nothing is added, not even a close frame.
        probe(
            "a binary TLV message \\x82\\x03abc",
            answer_to(b"\x01\x02ab", vec![more(b"\x82\x03abc")]),
            Expect::Untouched,
        ),
        probe(
            "server websocket frames without an upgrade",
            answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x04pong\x8a\x00")]),
            Expect::Untouched,
        ),
        probe(
            "binary bytes before an HTTP status line",
            answer_to(b"\x00\x01", vec![more(b"\x00\x01\x02\xffHTTP/1.1 200 OK\r\n\r\n")]),
            Expect::Untouched,
        ),
        Case {
            name: "TLS-looking records",
            rounds: vec![
                in_flight(vec![more(b"\x16\x03\x03\x00\x05hello")]),
                answer_to(b"\x17\x03\x03\x00\x02hi", vec![more(b"\x17\x03\x03\x00\x03abc")]),
                answer_to(b"\x17\x03\x03\x00\x02hi", vec![more(b"\x15\x03\x03\x00\x02\x01\x00")]),
            ],
            expect: Expect::Untouched,
        },
        Case {
            name: "Redis RESP replies, one a bulk string holding an HTTP response",
            rounds: vec![
                in_flight(vec![more(b"+OK\r\n")]),
                answer_to(b"*1\r\n$4\r\nPING\r\n", vec![more(b"+PONG\r\n")]),
                answer_to(
                    b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
                    vec![more(b"$19\r\nHTTP/1.1 200 OK\r\n\r\n\r\n")],
                ),
                answer_to(
                    b"*2\r\n$3\r\nGET\r\n$1\r\nw\r\n",
                    vec![more(b"$6\r\n\x81\x04pong\r\n")],
                ),
            ],
            expect: Expect::Untouched,
        },
        Case {
            name: "an HTTP/2 preface and frames",
            rounds: vec![
                in_flight(vec![
                    more(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
                    more(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"),
                ]),
                answer_to(
                    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                    vec![more(b"\x00\x00\x05\x01\x04\x00\x00\x00\x01\x88\x5f\x87\x49\x7c")],
                ),
                answer_to(
                    b"\x00\x00\x00\x04\x01\x00\x00\x00\x00",
                    vec![more(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00HTTP/1.1")],
                ),
            ],
            expect: Expect::Untouched,
        },
        Case {
            name: "random binary messages",
            rounds: (0..5u64)
                .map(|seed| {
                    let writes = vec![more(noise(seed + 1, 3000)), more(noise(seed + 9, 64))];
                    if seed == 0 {
                        in_flight(writes)
                    } else {
                        answer_to(&noise(seed + 17, 40), writes)
                    }
                })
                .collect(),
            expect: Expect::Untouched,
        },
    ];
    // The program first sees these connections in the middle of a response (its head
    // went out before the drain armed them): the body is the first write it sees.
    cases.extend([
        first_sight(
            "a message/http body, the first write the program sees",
            message_http_head(),
            vec![more(INNER)],
        ),
        first_sight(
            "a message/http body by sendfile, the first write the program sees",
            message_http_head(),
            vec![file(INNER)],
        ),
        first_sight(
            "a multipart batch, the first writes the program sees",
            head_for(
                INNER.len() + 14,
                "Content-Type: multipart/mixed; boundary=b\r\n",
            ),
            vec![more("--b\r\n\r\n"), more(INNER), more("\r\n--b--")],
        ),
        first_sight(
            "a CBOR body, the first write the program sees",
            head_for(5, "Content-Type: application/cbor\r\n"),
            vec![more(b"\x82\x03\x62ab")],
        ),
        first_sight(
            "a TLV body, the first write the program sees",
            head_for(5, "Content-Type: application/octet-stream\r\n"),
            vec![more(b"\x82\x03abc")],
        ),
        first_sight(
            "a 1 MiB body of whole heads by sendfile, the first write the program sees",
            head_for(MIB, ""),
            vec![file(repeated(WHOLE_HEAD))],
        ),
        Case {
            name: "the issue's bare-LF head, the first write the program sees",
            rounds: vec![
                in_flight(vec![head(
                    "HTTP/1.1 200 OK\nContent-Length: 14\n\nline1\r\nline2\r\n",
                )]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
    ]);
    for &(name, bytes) in CLEAN_HEADS {
        cases.push(probe(name, answer(vec![head(bytes)]), SECOND_ROUND));
    }
    for &(name, bytes) in REFUSED_HEADS {
        cases.push(probe(name, answer(vec![head(bytes)]), Expect::Untouched));
    }
    // The first boundary write is a binary message: left alone for good, the valid
    // heads after it included.
    cases.push(Case {
        name: "a binary message at the first boundary, HTTP heads after it",
        rounds: vec![
            in_flight(vec![head(ok(b"hello"))]),
            answer_to(b"\x01\x02ab", vec![more(b"\x82\x03abc")]),
            plain(),
            plain(),
        ],
        expect: Expect::Untouched,
    });
    cases
}

/// A valid head of exactly `len` bytes.
fn padded_head(len: usize) -> Vec<u8> {
    let fixed = head_for(0, "X-Pad: \r\n").len();
    head_for(0, &format!("X-Pad: {}\r\n", "p".repeat(len - fixed)))
}

/// A response whose `head` goes out before the drain arms the connection (the client's
/// next request waits unread, so the connection stays in flight), its `body` after:
/// the program's first sight of the connection is the body, never rewritten. The
/// response after the next read gets the header.
fn first_sight(name: &'static str, head_bytes: Vec<u8>, body: Vec<Step>) -> Case {
    let mut steps = vec![Step::Read(get().len()), head(head_bytes), Step::Armed];
    for write in body {
        steps.push(write);
        steps.push(Step::Pause(PIECE_GAP));
    }
    Case {
        name,
        rounds: vec![
            Round {
                requests: vec![[get(), get()].concat()],
                steps,
            },
            Round {
                requests: vec![],
                steps: vec![Step::Read(get().len()), head(ok(b"after"))],
            },
            plain(),
        ],
        // Round 1's request waited unread while round 0's body went out: its answer is no
        // boundary, round 2's is.
        expect: THIRD_ROUND,
    }
}

/// The body of the first response is written after the server read the client's next
/// (pipelined) request, and looks like a whole head: docs/in-band-close.md names it as a
/// limit (the write is a candidate by the socket's state).
fn read_ahead_case() -> Case {
    let pipelined = [get(), get()].concat();
    probe(
        "a body written after the next pipelined request was read",
        Round {
            requests: vec![pipelined],
            steps: vec![
                Step::Read(get().len()),
                head(message_http_head()),
                Step::Pause(ACKED),
                Step::Read(get().len()),
                more(INNER),
                Step::Pause(PIECE_GAP),
                head(ok(b"b")),
            ],
        },
        THIRD_ROUND,
    )
}

/// The corpus under `--websocket-close`: a close frame only after whole server frames
/// at a proven boundary, the header as before, nothing on a message that is not frames.
fn websocket_close_cases() -> Vec<Case> {
    vec![
        Case {
            // A switch of protocols the program sees leaves the connection alone for
            // good: what follows may be any protocol.
            name: "an upgrade after arming leaves the connection alone, frames included",
            rounds: vec![
                in_flight(vec![head(ok(b"hello"))]),
                answer_to(&upgrade_request(), vec![head(SWITCHING)]),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x04pong")]),
                answer_to(&masked_frame(b"more"), vec![more(b"\x81\x04more")]),
            ],
            expect: Expect::Untouched,
        },
        Case {
            // Upgraded before the program judged a write (round 0's first write only
            // sets the mark), as websockets open before the drain are.
            name: "two whole frames in one write get the close frame after both",
            rounds: vec![
                in_flight(vec![head(SWITCHING)]),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x04pong\x8a\x00")]),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x04pong")]),
            ],
            expect: Expect::GoingAway { round: 1, write: 0 },
        },
        probe(
            "a clean HTTP exchange still gets the header, no close frame",
            answer(vec![head(ok(b"hello"))]),
            SECOND_ROUND,
        ),
        Case {
            name: "a frame whose length does not add up gets nothing",
            rounds: vec![
                in_flight(vec![head(SWITCHING)]),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x05pong")]),
            ],
            expect: Expect::Untouched,
        },
        Case {
            name: "a masked frame from the server gets nothing",
            rounds: vec![
                in_flight(vec![head(SWITCHING)]),
                answer_to(&masked_frame(b"ping"), vec![more(b"\x81\x84abcdpong")]),
            ],
            expect: Expect::Untouched,
        },
        Case {
            name: "a body with a frame's shape, not at a boundary, gets nothing",
            rounds: vec![
                in_flight(vec![head(head_for(5, "")), more(b"\x82\x03\x62ab")]),
                answer(vec![head(head_for(5, "")), more(b"\x82\x03\x62ab")]),
                plain(),
            ],
            expect: SECOND_ROUND,
        },
    ]
}

/// The writes of a round: bytes, whether a read came since the previous write, and
/// whether the case marks it as starting a response.
struct Written {
    bytes: Vec<u8>,
    after_read: bool,
    head: bool,
}

fn writes_of(round: &Round) -> Vec<Written> {
    let mut writes = Vec::new();
    let mut read = false;
    for step in &round.steps {
        match step {
            Step::Read(_) => read = true,
            Step::Send { bytes, head } => {
                writes.push(Written {
                    bytes: bytes.clone(),
                    after_read: read,
                    head: *head,
                });
                read = false;
            }
            Step::Sendfile(bytes) => {
                writes.push(Written {
                    bytes: bytes.clone(),
                    after_read: read,
                    head: false,
                });
                read = false;
            }
            Step::Pause(_) | Step::Armed => {}
        }
    }
    writes
}

/// The length of the status line (CRLF included) when `bytes` start with a whole
/// response head of a final status (200-599) by RFC 9112's grammar, CRLF line ends,
/// at most [`MAX_HEAD`] bytes: the test's own model of a head, not the program's.
fn final_head_status_line(bytes: &[u8]) -> Option<usize> {
    let visible = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b);
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let window = &bytes[..bytes.len().min(MAX_HEAD)];
    let end = find(window, b"\r\n\r\n")? + 4;
    let head = &window[..end];
    let status_end = find(head, b"\r\n")?;
    let status = &head[..status_end];
    if !(status.starts_with(b"HTTP/1.1 ") || status.starts_with(b"HTTP/1.0 "))
        || status.len() < 13
        || !status[9..12].iter().all(u8::is_ascii_digit)
        || status[12] != b' '
        || !status[13..].iter().all(|&b| visible(b))
        || !(b'2'..=b'5').contains(&status[9])
    {
        return None;
    }
    let mut at = status_end + 2;
    while at < end - 2 {
        let line_end = at + find(&head[at..], b"\r\n")?;
        let line = &head[at..line_end];
        let colon = line.iter().position(|&b| b == b':')?;
        if colon == 0
            || !line[..colon].iter().all(|&b| tchar(b))
            || !line[colon + 1..].iter().all(|&b| visible(b))
        {
            return None;
        }
        at = line_end + 2;
    }
    Some(status_end + 2)
}

/// Whether `bytes` are exactly one or more whole websocket frames as a server sends
/// them (FIN, unmasked, a known opcode).
fn whole_server_frames(bytes: &[u8]) -> bool {
    let mut at = 0;
    while at < bytes.len() {
        let Some(&[first, second]) = bytes.get(at..at + 2) else {
            return false;
        };
        let (length, header) = match second & 0x7f {
            126 => match bytes.get(at + 2..at + 4) {
                Some(l) => (u16::from_be_bytes([l[0], l[1]]) as usize, 4),
                None => return false,
            },
            127 => return false,
            short => (short as usize, 2),
        };
        if first & 0x80 == 0
            || first & 0x30 != 0
            || second & 0x80 != 0
            || ![0x0, 0x1, 0x2, 0x8, 0x9, 0xa].contains(&(first & 0x0f))
        {
            return false;
        }
        at += header + length;
    }
    at == bytes.len() && !bytes.is_empty()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as a readable, escaped excerpt.
fn excerpt(bytes: &[u8], from: usize, len: usize) -> String {
    let start = from.min(bytes.len());
    let end = (from + len).min(bytes.len());
    bytes[start..end].escape_ascii().to_string()
}

/// Where `got` first differs from `expected`, both shown around it.
fn difference(expected: &[u8], got: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let from = at.saturating_sub(24);
    format!(
        "{} bytes expected, {} read; first difference at byte {at}: expected \"{}\", read \"{}\"",
        expected.len(),
        got.len(),
        excerpt(expected, from, 64),
        excerpt(got, from, 64),
    )
}

/// Reads until `buf` is full or the stream ends or times out; returns how much it got.
fn read_up_to(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    filled
}

/// What a client saw on its connection.
#[derive(Debug, Default)]
struct Seen {
    insertions: Vec<Insertion>,
    fault: Option<String>,
}

/// Plays the client's side of `rounds` and judges every round's bytes.
fn client(mut stream: TcpStream, rounds: &[Round], going_away: bool) -> Seen {
    let mut seen = Seen::default();
    for (index, round) in rounds.iter().enumerate() {
        for (i, request) in round.requests.iter().enumerate() {
            if i > 0 {
                thread::sleep(PIECE_GAP * 2);
            }
            if let Err(err) = stream.write_all(request) {
                seen.fault = Some(format!("round {index}: sending the request: {err}"));
                return seen;
            }
        }
        match judge_round(&mut stream, index, round, going_away) {
            Ok(Some(insertion)) => seen.insertions.push(insertion),
            Ok(None) => {}
            Err(fault) => {
                seen.fault = Some(format!("round {index}: {fault}"));
                return seen;
            }
        }
    }
    stream.set_read_timeout(Some(10 * SECOND)).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Ok(_) => {
            seen.fault = Some(format!(
                "{} bytes after the last round: \"{}\"",
                rest.len(),
                excerpt(&rest, 0, 64)
            ))
        }
        Err(err) => seen.fault = Some(format!("no EOF after the last round: {err}")),
    }
    seen
}

/// Reads one round's bytes: exactly the server's, or the server's with one allowed
/// insertion (which it returns), else a description of the change.
fn judge_round(
    stream: &mut TcpStream,
    index: usize,
    round: &Round,
    going_away: bool,
) -> Result<Option<Insertion>, String> {
    let writes = writes_of(round);
    let plain: Vec<u8> = writes.iter().flat_map(|w| w.bytes.clone()).collect();
    stream.set_read_timeout(Some(20 * SECOND)).unwrap();
    let mut got = vec![0; plain.len()];
    let filled = read_up_to(stream, &mut got);
    if filled < plain.len() {
        got.truncate(filled);
        return Err(format!(
            "the connection ended or stalled: {}",
            difference(&plain, &got)
        ));
    }
    let frames_last = writes
        .last()
        .is_some_and(|w| w.after_read && whole_server_frames(&w.bytes));
    if got == plain && !(going_away && frames_last) {
        return Ok(None);
    }
    // A close frame appended to the round's last write arrives with that write's bytes
    // (the server sets TCP_NODELAY, so Nagle does not hold it back for the client's
    // delayed ACK), all read by now: a short wait finds it (a long one would look like a client's pause,
    // where a drain may close the connection). A header inserted earlier pushes up to 19
    // bytes of later writes back, which come after the pauses between writes.
    let wait = if got == plain { 50 } else { 300 };
    stream
        .set_read_timeout(Some(Duration::from_millis(wait)))
        .unwrap();
    let mut extra = vec![0; HEADER.len() + GOING_AWAY.len()];
    let more = read_up_to(stream, &mut extra);
    got.extend_from_slice(&extra[..more]);
    if got == plain {
        return Ok(None);
    }
    let mut start = 0;
    for (write, w) in writes.iter().enumerate() {
        let end = start + w.bytes.len();
        if w.after_read && w.head {
            if let Some(status_line) = final_head_status_line(&w.bytes) {
                let at = start + status_line;
                if got == [&plain[..at], HEADER, &plain[at..]].concat() {
                    return Ok(Some(Insertion::Header {
                        round: index,
                        write,
                    }));
                }
            }
        }
        if going_away
            && w.after_read
            && whole_server_frames(&w.bytes)
            && got == [&plain[..end], GOING_AWAY, &plain[end..]].concat()
        {
            return Ok(Some(Insertion::GoingAway {
                round: index,
                write,
            }));
        }
        start = end;
    }
    Err(format!("bytes changed: {}", difference(&plain, &got)))
}

/// Plays the server's side of `rounds` on `stream`, then closes its write side.
fn server(
    mut stream: TcpStream,
    rounds: &[Round],
    files: &Path,
    ready: &Barrier,
    go: &Barrier,
) -> io::Result<()> {
    stream.set_read_timeout(Some(30 * SECOND))?;
    // As Go and nginx (for keep-alive) do: each write leaves at once, additions included.
    stream.set_nodelay(true)?;
    let mut armed = false;
    for round in rounds {
        for step in &round.steps {
            match step {
                Step::Read(len) => stream.read_exact(&mut vec![0; *len])?,
                Step::Send { bytes, .. } => stream.write_all(bytes)?,
                Step::Sendfile(bytes) => send_file(&stream, bytes, files)?,
                Step::Pause(pause) => thread::sleep(*pause),
                Step::Armed => {
                    ready.wait();
                    go.wait();
                    armed = true;
                }
            }
        }
    }
    assert!(armed, "every case waits in round 0 for the drain");
    stream.shutdown(Shutdown::Write)?;
    let _ = stream.read_to_end(&mut Vec::new());
    Ok(())
}

/// `sendfile()` of `bytes` from a file of their own under `dir`.
fn send_file(stream: &TcpStream, bytes: &[u8], dir: &Path) -> io::Result<()> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("piece-{n}"));
    std::fs::write(&path, bytes)?;
    let file = File::open(&path)?;
    let mut offset: libc::off_t = 0;
    while (offset as usize) < bytes.len() {
        let count = bytes.len() - offset as usize;
        let sent = nix::sys::sendfile::sendfile(stream, &file, Some(&mut offset), count)?;
        if sent == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// A fresh directory under the test's target tmp for `name`, of this call alone: tests of
/// this binary run at once in one process.
fn scratch(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("integrity-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cases` on 127.0.0.1:8080 under `drainctl drain --port 8080 --json ARGS` and
/// checks every client's bytes, where the additions came, and the drain's report.
fn run_corpus(cases: Vec<Case>, args: &[&str], going_away: bool) {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let files = scratch("corpus");
    let listener: TcpListener = bind_listener(ADDR.parse().unwrap(), false, false).unwrap();
    let ready = Arc::new(Barrier::new(cases.len() + 1));
    let go = Arc::new(Barrier::new(cases.len() + 1));
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for case in &cases {
        let stream = TcpStream::connect(ADDR).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let rounds = case.rounds.clone();
        clients.push(thread::spawn(move || client(stream, &rounds, going_away)));
        let (rounds, files) = (case.rounds.clone(), files.clone());
        let (ready, go) = (Arc::clone(&ready), Arc::clone(&go));
        servers.push(thread::spawn(move || {
            server(accepted, &rounds, &files, &ready, &go)
        }));
    }
    // Every round 0 request is read (or its head sent and the next request waiting
    // unread): all in flight for a while, as the drain finds them; the answers wait
    // until the drain armed the connections (about 2.5 s in all).
    ready.wait();
    thread::sleep(SECOND);
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--json"].iter().chain(args));
    wait_until_armed(&drainctl);
    go.wait();
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let server_errors: Vec<Option<io::Error>> = servers
        .into_iter()
        .map(|s| s.join().unwrap().err())
        .collect();
    drop(listener);
    let output = drainctl.wait(30 * SECOND);
    let _ = std::fs::remove_dir_all(&files);
    let mut failures = Vec::new();
    for (index, (case, seen)) in cases.iter().zip(&seen).enumerate() {
        eprintln!("{:?}: {:?}", case.name, seen);
        if let Some(fault) = &seen.fault {
            failures.push(format!("{}: {fault}", case.name));
            continue;
        }
        // A server's error where its client saw nothing wrong (a client that gave up
        // makes its server's reads fail: not news).
        if let Some(err) = &server_errors[index] {
            failures.push(format!("{}: server: {err}", case.name));
        }
        let wanted: Vec<Insertion> = match case.expect {
            Expect::Header { round, write } => vec![Insertion::Header { round, write }],
            Expect::GoingAway { round, write } => vec![Insertion::GoingAway { round, write }],
            Expect::Untouched => vec![],
        };
        if seen.insertions != wanted {
            failures.push(format!(
                "{}: added {:?}, expected {:?}",
                case.name, seen.insertions, wanted
            ));
        }
    }
    failures.extend(report_mismatch(&output, &seen));
    assert!(
        failures.is_empty(),
        "{} failures in {} cases under `drainctl drain {}`:\n{}\ndrain log:\n{}",
        failures.len(),
        cases.len(),
        args.join(" "),
        failures.join("\n"),
        output.stderr_text()
    );
}

/// Waits (at most 10 s) until the drain has the in-band close in place: it loads the
/// program once a pass finds a busy connection, which takes most of a second in a debug
/// build, so a fixed sleep would race it.
fn wait_until_armed(drainctl: &Drainctl) {
    drainctl
        .log()
        .wait_for_line(10 * SECOND, |line| line.contains("in-band close in place"))
        .expect("the drain loads the in-band close");
    // The pass that found the program in arms every busy connection right after.
    thread::sleep(Duration::from_millis(200));
}

/// Whether the drain ended on its own and counted what the clients saw.
fn report_mismatch(output: &DrainctlOutput, seen: &[Seen]) -> Option<String> {
    let connections_with = |header: bool| {
        seen.iter()
            .filter(|s| {
                s.insertions
                    .iter()
                    .any(|i| matches!(i, Insertion::Header { .. }) == header)
            })
            .count()
    };
    let report = output.json();
    let counted = (
        report["connection_close_sent"].as_u64(),
        report["websocket_close_sent"].as_u64(),
    );
    let saw = (
        connections_with(true) as u64,
        connections_with(false) as u64,
    );
    (output.code != Some(0) || counted != (Some(saw.0), Some(saw.1))).then(|| {
        format!(
            "the drain (exit {:?}) counted (connection_close_sent, websocket_close_sent) = \
             {counted:?}, the clients saw {saw:?}: {}",
            output.code, output.stdout
        )
    })
}

#[test]
fn the_test_s_own_head_model_takes_the_clean_heads_and_refuses_the_others() {
    for (name, bytes) in CLEAN_HEADS {
        assert!(final_head_status_line(bytes).is_some(), "{name}");
    }
    for (name, bytes) in REFUSED_HEADS {
        assert_eq!(final_head_status_line(bytes), None, "{name}");
    }
    assert_eq!(final_head_status_line(&padded_head(MAX_HEAD)), Some(17));
    assert_eq!(final_head_status_line(&padded_head(MAX_HEAD + 1)), None);
    assert_eq!(final_head_status_line(CONTINUE), None);
    assert!(whole_server_frames(b"\x81\x04pong\x8a\x00"));
    assert!(!whole_server_frames(b"\x81\x05pong"));
    assert!(!whole_server_frames(b"\x81\x84abcdpong"));
}

#[test]
fn a_drain_with_the_defaults_adds_connection_close_only_to_response_heads_at_proven_boundaries() {
    let cases = cases();
    assert!(cases.len() >= 40, "the corpus holds {} cases", cases.len());
    run_corpus(cases, &[], false);
}

#[test]
fn a_drain_with_a_longer_quiet_period_changes_the_same_bytes_only() {
    run_corpus(cases(), &["--quiet-period", "3s"], false);
}

#[test]
fn a_body_written_after_the_server_read_the_next_pipelined_request_is_untouched() {
    run_corpus(vec![read_ahead_case()], &[], false);
}

#[test]
fn websocket_close_appends_a_close_frame_only_after_whole_server_frames_at_a_boundary() {
    run_corpus(websocket_close_cases(), &["--websocket-close"], true);
}

// ---------------------------------------------------------------------------------
// Real servers.

/// One HTTP/1.1 response as the client read it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawResponse {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// Reads one response: its head to the empty line, its body by Content-Length or
/// chunked framing, both as they arrived (chunk framing included).
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<RawResponse> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if reader.read_until(b'\n', &mut head)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let mut body = Vec::new();
    if text.contains("\r\ntransfer-encoding: chunked\r\n") {
        loop {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line)?;
            body.extend_from_slice(&line);
            let size = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                // The trailer section: lines up to an empty one.
                loop {
                    let mut line = Vec::new();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    body.extend_from_slice(&line);
                    if line == b"\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    } else if let Some(length) = text
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length: "))
    {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(RawResponse { head, body })
}

/// The head with the one allowed header taken out (when it is right after the status
/// line) and the Date value masked, and whether the header was there.
fn comparable(head: &[u8]) -> (Vec<u8>, bool) {
    let status_end = find(head, b"\r\n").map_or(0, |at| at + 2);
    let inserted = head[status_end..].starts_with(HEADER);
    let head = if inserted {
        [&head[..status_end], &head[status_end + HEADER.len()..]].concat()
    } else {
        head.to_vec()
    };
    let masked: Vec<u8> = head
        .split(|&b| b == b'\n')
        .map(|line| {
            if line.starts_with(b"Date: ") {
                b"Date: *\r".to_vec()
            } else {
                line.to_vec()
            }
        })
        .collect::<Vec<_>>()
        .join(&b'\n');
    (masked, inserted)
}

fn request_for(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// What one keep-alive client saw during the drain.
#[derive(Debug, Default)]
struct Fetched {
    requests: usize,
    /// The request numbers whose response carried the inserted header.
    headers: Vec<usize>,
    fault: Option<String>,
}

/// A keep-alive client that requests `paths` (from `first` on, round robin) back to
/// back, compares every response with `expected` byte for byte but for the one allowed
/// header and the Date, and stops two requests after it saw the header, or at
/// `deadline`.
fn fetch_until_closed(
    paths: &[String],
    expected: &[RawResponse],
    first: usize,
    deadline: Instant,
) -> Fetched {
    let mut fetched = Fetched::default();
    let stream = TcpStream::connect(ADDR).unwrap();
    stream.set_read_timeout(Some(10 * SECOND)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while Instant::now() < deadline
        && fetched
            .headers
            .first()
            .is_none_or(|&at| fetched.requests < at + 3)
    {
        let index = (first + fetched.requests) % paths.len();
        if let Err(err) = writer.write_all(&request_for(&paths[index])) {
            fetched.fault = Some(format!("request {}: {err}", fetched.requests));
            return fetched;
        }
        let response = match read_response(&mut reader) {
            Ok(response) => response,
            Err(err) => {
                fetched.fault = Some(format!(
                    "request {} ({}): {err}",
                    fetched.requests, paths[index]
                ));
                return fetched;
            }
        };
        let (head, inserted) = comparable(&response.head);
        let (want, _) = comparable(&expected[index].head);
        if head != want || response.body != expected[index].body {
            fetched.fault = Some(format!(
                "request {} ({}): head: {}; body: {}",
                fetched.requests,
                paths[index],
                difference(&want, &head),
                difference(&expected[index].body, &response.body)
            ));
            return fetched;
        }
        if inserted {
            fetched.headers.push(fetched.requests);
        }
        fetched.requests += 1;
    }
    fetched
}

/// The responses to `paths` before any drain, on a connection of their own.
fn baseline(paths: &[String]) -> Vec<RawResponse> {
    let stream = connect_when_listening();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    paths
        .iter()
        .map(|path| {
            writer.write_all(&request_for(path)).unwrap();
            read_response(&mut reader).unwrap()
        })
        .collect()
}

fn connect_when_listening() -> TcpStream {
    let deadline = Instant::now() + 10 * SECOND;
    loop {
        match TcpStream::connect(ADDR) {
            Ok(stream) => {
                stream.set_read_timeout(Some(10 * SECOND)).unwrap();
                return stream;
            }
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(err) => panic!("nothing listens on {ADDR}: {err}"),
        }
    }
}

/// The files a static server serves: 0 B, 1 KiB, 64 KiB + 1, 1 MiB, and one whose
/// content is itself an HTTP response (status lines all through).
fn static_files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("empty".to_string(), Vec::new()),
        ("1k".to_string(), noise(3, 1024)),
        ("64k1".to_string(), noise(5, 65537)),
        ("1m".to_string(), noise(7, MIB)),
        (
            "response.http".to_string(),
            [head_for(MIB, ""), repeated(WHOLE_HEAD)].concat(),
        ),
    ];
    for (name, content) in &files {
        std::fs::write(root.join(name), content).unwrap();
    }
    files
}

/// Keep-alive clients busy on the server at 127.0.0.1:8080 when a drain with the
/// defaults starts; every one must get the header once (at a response head), every
/// byte else as the server sends it.
fn drain_busy_http_server(paths: &[String], expected: &[RawResponse]) {
    const CLIENTS: usize = 4;
    let deadline = Instant::now() + 12 * SECOND;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|first| {
            let (paths, expected) = (paths.to_vec(), expected.to_vec());
            thread::spawn(move || fetch_until_closed(&paths, &expected, first, deadline))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--json"]);
    let fetched: Vec<Fetched> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let output = drainctl.wait(30 * SECOND);
    for (i, f) in fetched.iter().enumerate() {
        eprintln!("client {i}: {f:?}");
        assert_eq!(f.fault, None, "client {i}; log:\n{}", output.stderr_text());
        assert_eq!(
            f.headers.len(),
            1,
            "client {i} saw the header after {:?} of {} requests; log:\n{}",
            f.headers,
            f.requests,
            output.stderr_text()
        );
    }
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(
        output.json()["connection_close_sent"],
        CLIENTS,
        "{}",
        output.stdout
    );
}

#[test]
fn nginx_files_sent_by_sendfile_arrive_byte_for_byte_with_one_connection_close() {
    let Some(nginx_bin) = require_tool("nginx") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let dir = scratch("nginx");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let files = static_files(&root);
    nginx::static_prefix(&dir.join("prefix"), 8080, &root).unwrap();
    let child = nginx::command(&nginx_bin, &dir.join("prefix"))
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    let _nginx = nginx::Nginx(ChildGuard(child));
    let paths: Vec<String> = files.iter().map(|(name, _)| format!("/{name}")).collect();
    let expected = baseline(&paths);
    for ((name, content), response) in files.iter().zip(&expected) {
        assert_eq!(&response.body, content, "nginx served {name} unchanged");
    }
    drain_busy_http_server(&paths, &expected);
}

/// Builds tests/support/go-server (standard library only, offline) under the target
/// directory; `None` (with a SKIPPED line) where Go is not installed.
fn go_server() -> Option<PathBuf> {
    let go = require_tool("go")?;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-server");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/go-server");
    Some(drain_tests::go::build(&go, &source, &dir).expect("go build of tests/support/go-server"))
}

#[test]
fn a_go_net_http_server_is_changed_only_by_one_connection_close_per_connection() {
    let Some(bin) = go_server() else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let dir = scratch("go");
    let files = static_files(&dir);
    let mut child = Command::new(bin)
        .args(["-listen", ADDR, "-root"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Go server");
    let events = EventReader::from_reader("go-server", child.stdout.take().unwrap());
    let _server = ChildGuard(child);
    events
        .wait_for("listening", 10 * SECOND)
        .expect("the Go server listens");
    let mut paths: Vec<String> = files
        .iter()
        .map(|(name, _)| format!("/files/{name}"))
        .collect();
    paths.push("/stream/3".to_string());
    let expected = baseline(&paths);
    for ((name, content), response) in files.iter().zip(&expected) {
        assert_eq!(
            &response.body, content,
            "the Go server served {name} unchanged"
        );
    }
    drain_busy_http_server(&paths, &expected);
}

/// The messages tests/support/ws_messages.py answers each client message with, as the
/// server's frames.
fn ws_answer() -> Vec<u8> {
    let frame =
        |opcode: u8, payload: &[u8]| [&[0x80 | opcode, payload.len() as u8][..], payload].concat();
    [
        frame(1, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        frame(2, b"\x82\x03abc"),
        frame(2, b"\x88\x02\x03\xe9"),
        frame(1, b"pong"),
        frame(2, b"\x82\x03\x62ab"),
    ]
    .concat()
}

/// Python with the `websockets` package, `None` (with a SKIPPED line) where missing.
fn python_with_websockets() -> Option<PathBuf> {
    let python = require_tool("python3")?;
    let found = Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("CI").as_deref() == Ok("true") {
        panic!("python3 lacks the websockets package under CI: `cargo xtask setup` installs it");
    }
    if !found {
        eprintln!("SKIPPED: python3 has no websockets package");
    }
    found.then_some(python)
}

/// A websocket client: handshake, then messages answered by [`ws_answer`] back to back
/// until `deadline`, each answer compared byte for byte, then a close handshake.
/// `going_away`: a close frame may follow the answer's first message (the server's
/// first write after it read the client's message); the client then closes at once.
/// Returns the exchange whose answer carried the close frame, if one did.
fn websocket_client(deadline: Instant, going_away: bool) -> Result<Option<usize>, String> {
    let mut stream = connect_when_listening();
    stream.write_all(&upgrade_request()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let response = read_response(&mut reader).map_err(|e| format!("handshake: {e}"))?;
    if !response.head.starts_with(b"HTTP/1.1 101 ")
        || response.head.windows(HEADER.len()).any(|w| w == HEADER)
    {
        return Err(format!("handshake: {}", response.head.escape_ascii()));
    }
    let answer = ws_answer();
    let first_message = 2 + answer[1] as usize;
    let with_close = [
        &answer[..first_message],
        GOING_AWAY,
        &answer[first_message..],
    ]
    .concat();
    let mut closed_at = None;
    let mut exchange = 0;
    while closed_at.is_none() && Instant::now() < deadline {
        stream.write_all(&masked_frame(b"next")).unwrap();
        let mut got = vec![0; answer.len()];
        reader
            .read_exact(&mut got)
            .map_err(|e| format!("exchange {exchange}: {e}"))?;
        if got != answer {
            let mut rest = [0; GOING_AWAY.len()];
            if going_away && reader.read_exact(&mut rest).is_ok() {
                got.extend_from_slice(&rest);
            }
            if got != with_close {
                return Err(format!(
                    "exchange {exchange}: {}",
                    difference(&answer, &got)
                ));
            }
            closed_at = Some(exchange);
        }
        exchange += 1;
    }
    // Close (1000): the server answers with its close frame (1000), then EOF.
    stream
        .write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .unwrap();
    let mut rest = Vec::new();
    reader
        .read_to_end(&mut rest)
        .map_err(|e| format!("closing: {e}"))?;
    if rest != b"\x88\x02\x03\xe8" {
        return Err(format!("closing: read \"{}\"", rest.escape_ascii()));
    }
    Ok(closed_at)
}

/// Three websocket clients busy on tests/support/ws_messages.py when `drainctl drain
/// --port 8080 --json ARGS` starts; returns the exchange at which each saw a close frame
/// (with `going_away`) and the drain's report.
fn drain_busy_websockets(
    args: &[&str],
    going_away: bool,
) -> Option<(Vec<Option<usize>>, DrainctlOutput)> {
    let python = python_with_websockets()?;
    let netns = Netns::require()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/ws_messages.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg("8080")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the websocket server");
    let events = EventReader::from_reader("ws-server", child.stdout.take().unwrap());
    let _server = ChildGuard(child);
    events
        .wait_for("listening", 10 * SECOND)
        .expect("the websocket server listens");
    let deadline = Instant::now() + 4 * SECOND;
    let clients: Vec<_> = (0..3)
        .map(|_| thread::spawn(move || websocket_client(deadline, going_away)))
        .collect();
    thread::sleep(Duration::from_millis(300));
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--json"].iter().chain(args));
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let output = drainctl.wait(30 * SECOND);
    drop(netns);
    let mut closed_at = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            Ok(at) => closed_at.push(at),
            Err(err) => panic!("client {i}: {err}; log:\n{}", output.stderr_text()),
        }
    }
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(
        output.json()["connection_close_sent"],
        0,
        "{}",
        output.stdout
    );
    Some((closed_at, output))
}

#[test]
fn a_websocket_server_s_frames_pass_untouched_and_get_no_close_frame_by_default() {
    let Some((closed_at, output)) = drain_busy_websockets(&[], false) else {
        return;
    };
    assert_eq!(closed_at, [None, None, None]);
    assert_eq!(
        output.json()["websocket_close_sent"],
        0,
        "{}",
        output.stdout
    );
}

#[test]
fn with_websocket_close_each_busy_websocket_gets_one_close_frame_after_a_whole_message() {
    let Some((closed_at, output)) = drain_busy_websockets(&["--websocket-close"], true) else {
        return;
    };
    assert!(
        closed_at.iter().all(Option::is_some),
        "close frames at exchanges {closed_at:?}; log:\n{}",
        output.stderr_text()
    );
    assert_eq!(
        output.json()["websocket_close_sent"],
        3,
        "{}",
        output.stdout
    );
}

/// RESP for a command of `args`.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut command = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        command.extend_from_slice(arg);
        command.extend_from_slice(b"\r\n");
    }
    command
}

fn resp_bulk(value: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", value.len()).as_bytes(), value, b"\r\n"].concat()
}

#[test]
fn redis_replies_that_look_like_http_or_websocket_frames_pass_untouched() {
    let Some(redis) = require_tool("redis-server") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let dir = scratch("redis");
    let child = Command::new(redis)
        .args([
            "--port",
            "8080",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let _redis = ChildGuard(child);
    let values: Vec<Vec<u8>> = vec![
        ok(b"hello"),
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n".to_vec(),
        b"\x82\x03abc".to_vec(),
        b"\x81\x04pong\x88\x02\x03\xe9".to_vec(),
        repeated(STATUS_LINE)[..65536].to_vec(),
        noise(11, 4096),
    ];
    let mut setup = connect_when_listening();
    for (i, value) in values.iter().enumerate() {
        setup
            .write_all(&resp_command(&[b"SET", format!("k{i}").as_bytes(), value]))
            .unwrap();
        let mut reply = [0; 5];
        setup.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
    }
    drop(setup);
    let deadline = Instant::now() + 4 * SECOND;
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let values = values.clone();
            thread::spawn(move || -> Result<usize, String> {
                let mut stream = connect_when_listening();
                let mut n = 0;
                while Instant::now() < deadline {
                    let i = (c + n) % values.len();
                    let (command, reply) = if n % 7 == 6 {
                        (resp_command(&[b"PING"]), b"+PONG\r\n".to_vec())
                    } else {
                        (
                            resp_command(&[b"GET", format!("k{i}").as_bytes()]),
                            resp_bulk(&values[i]),
                        )
                    };
                    stream.write_all(&command).map_err(|e| e.to_string())?;
                    let mut got = vec![0; reply.len()];
                    stream
                        .read_exact(&mut got)
                        .map_err(|e| format!("reply {n}: {e}"))?;
                    if got != reply {
                        return Err(format!("reply {n}: {}", difference(&reply, &got)));
                    }
                    n += 1;
                }
                stream.write_all(&resp_command(&[b"QUIT"])).unwrap();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).map_err(|e| e.to_string())?;
                if rest != b"+OK\r\n" {
                    return Err(format!("after QUIT: \"{}\"", rest.escape_ascii()));
                }
                Ok(n)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let drainctl: Drainctl = spawn_drainctl(["drain", "--port", "8080", "--json"]);
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let output = drainctl.wait(30 * SECOND);
    for (i, result) in results.iter().enumerate() {
        assert!(
            result.is_ok(),
            "client {i}: {result:?}; log:\n{}",
            output.stderr_text()
        );
    }
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["connection_close_sent"], 0, "{}", output.stdout);
    assert_eq!(report["websocket_close_sent"], 0, "{}", output.stdout);
}

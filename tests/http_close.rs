//! `Connection: close` written into HTTP/1.x responses by the drain's sk_msg program:
//! byte exact, only where a final response starts, once per connection, and nothing
//! else touched. A scripted server (one thread per connection, each write its own
//! `sendmsg`) answers clients that are in flight when the drain starts, then, once the
//! drain has had time to add their sockets, writes what each case says; every client
//! reads to EOF and compares with exactly what was expected. Real eBPF, real sockets,
//! a private network namespace.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{mpsc, Arc, Barrier},
    thread,
    time::Duration,
};

use drain_tests::{bind_listener, spawn_drainctl, Netns};

const SECOND: Duration = Duration::from_secs(1);
const HEADER: &[u8] = b"Connection: close\r\n";
/// A websocket close frame from a server: status 1001, going away.
const WEBSOCKET_GOING_AWAY: &[u8] = b"\x88\x02\x03\xe9";

/// What the server writes on one connection, one `write` (sendmsg) per piece, and what
/// the client must read.
struct Case {
    name: &'static str,
    writes: Vec<&'static [u8]>,
    expected: Vec<u8>,
    rewritten: bool,
}

/// Messages the program must pass as they are: a binary protocol, text that is not an
/// HTTP/1.x status line, a TLS-looking record, and websocket-like messages that are not
/// whole server frames (masked as clients send, or a size that does not add up).
const UNTOUCHED: &[&[u8]] = &[
    b"\x00\x01\x02\xffHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    b"HTTP/1.1 099 Odd\r\n\r\n",
    b"\x16\x03\x01\x00\x05hello",
    b"\x81\x84abcdpong",
    b"\x81\x05pong",
];

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn cases() -> Vec<Case> {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kept: yes\r\n\r\nhello" as &[u8];
    let ok_closed = concat(&[
        b"HTTP/1.1 200 OK\r\n",
        HEADER,
        b"Content-Length: 5\r\nX-Kept: yes\r\n\r\nhello",
    ]);
    vec![
        Case {
            // The second response on the connection is not touched: once per connection.
            name: "one write per response, two responses",
            writes: vec![ok, ok],
            expected: concat(&[&ok_closed, ok]),
            rewritten: true,
        },
        Case {
            name: "head and body in several writes",
            writes: vec![
                b"HTTP/1.1 404 Not Found\r\n",
                b"Content-Type: text/plain\r\nContent-Length: 9\r\n\r\n",
                b"not ",
                b"found",
            ],
            expected: concat(&[
                b"HTTP/1.1 404 Not Found\r\n",
                HEADER,
                b"Content-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found",
            ]),
            rewritten: true,
        },
        Case {
            // A status line split over two writes is skipped; the next response gets it.
            name: "status line split over two writes",
            writes: vec![b"HTTP/1.1 200 O", b"K\r\nContent-Length: 2\r\n\r\nab", ok],
            expected: concat(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab", &ok_closed]),
            rewritten: true,
        },
        Case {
            name: "interim 100 Continue, then the final response",
            writes: vec![b"HTTP/1.1 100 Continue\r\n\r\n", ok],
            expected: concat(&[b"HTTP/1.1 100 Continue\r\n\r\n", &ok_closed]),
            rewritten: true,
        },
        Case {
            // Two pipelined answers in one write: only the first head gets it.
            name: "pipelined pair in one write",
            writes: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb"],
            expected: concat(&[
                b"HTTP/1.1 200 OK\r\n",
                HEADER,
                b"Content-Length: 1\r\n\r\naHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb",
            ]),
            rewritten: true,
        },
        Case {
            name: "HTTP/1.0",
            writes: vec![b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"],
            expected: concat(&[b"HTTP/1.0 200 OK\r\n", HEADER, b"Content-Length: 0\r\n\r\n"]),
            rewritten: true,
        },
        Case {
            // A server's websocket message (two whole frames) gets a close frame (1001)
            // after it; its next message is untouched.
            name: "websocket frames",
            writes: vec![b"\x81\x04pong\x8a\x00", b"\x81\x04pong"],
            expected: concat(&[b"\x81\x04pong\x8a\x00", WEBSOCKET_GOING_AWAY, b"\x81\x04pong"]),
            rewritten: false,
        },
        Case {
            // A binary protocol, and text that is not an HTTP/1.x status line.
            name: "binary and other protocols",
            writes: UNTOUCHED.to_vec(),
            expected: concat(UNTOUCHED),
            rewritten: false,
        },
    ]
}

/// Reads the client's request (one line), waits for `go`, then writes the case's pieces
/// as separate `sendmsg` calls, shuts down its write side and waits for the client's EOF.
fn serve_case(mut stream: TcpStream, writes: Vec<&'static [u8]>, go: Arc<Barrier>) {
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {}
    go.wait();
    for piece in writes {
        stream.write_all(piece).unwrap();
        // Separate pieces stay separate messages for the program (no coalescing).
        thread::sleep(Duration::from_millis(30));
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[test]
fn connection_close_is_written_byte_exactly_into_http1_response_heads_only() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let listener: TcpListener =
        bind_listener("127.0.0.1:8080".parse().unwrap(), false, false).unwrap();
    let cases = cases();
    let go = Arc::new(Barrier::new(cases.len() + 1));
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for case in &cases {
        let mut client = TcpStream::connect("127.0.0.1:8080").unwrap();
        client.write_all(b"request\n").unwrap();
        let (stream, _) = listener.accept().unwrap();
        let go = Arc::clone(&go);
        let writes = case.writes.clone();
        servers.push(thread::spawn(move || serve_case(stream, writes, go)));
        clients.push(client);
    }
    // Every connection is in flight (its request read, no answer yet) when the drain
    // starts, so the drain adds each to the program's map at its first pass.
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--timeout",
        "30s",
        "--json",
        "-v",
    ]);
    thread::sleep(2 * SECOND);
    go.wait();
    let (read_tx, read_rx) = mpsc::channel();
    for (index, mut client) in clients.into_iter().enumerate() {
        let read_tx = read_tx.clone();
        thread::spawn(move || {
            client.set_read_timeout(Some(20 * SECOND)).unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            read_tx.send((index, got)).unwrap();
        });
    }
    drop(read_tx);
    let mut read: Vec<(usize, Vec<u8>)> = read_rx.iter().collect();
    read.sort();
    for server in servers {
        server.join().unwrap();
    }
    drop(listener);
    let output = drainctl.wait(30 * SECOND);
    for (index, got) in &read {
        let case = &cases[*index];
        assert_eq!(
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(&case.expected),
            "case {:?}; drain log:\n{}",
            case.name,
            output.stderr_text()
        );
    }
    assert_eq!(read.len(), cases.len());
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let rewritten = cases.iter().filter(|c| c.rewritten).count();
    assert_eq!(
        output.json()["connection_close_sent"],
        rewritten,
        "{}",
        output.stdout
    );
    assert_eq!(
        output.json()["websocket_close_sent"],
        1,
        "{}",
        output.stdout
    );
    // Every rewritten connection was found by its mark and taken out of the map: the
    // drain computes the program's key (struct sk_msg_md's byte orders) the same way.
    let log = output.stderr_text();
    let released: usize = log
        .lines()
        .filter_map(|line| line.split("released=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(released, rewritten + 1, "log:\n{log}");
}

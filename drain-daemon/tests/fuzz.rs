//! Fuzzing the parsers of bytes drain-daemon does not control, for a bounded time inside
//! `cargo test`: the control protocol's request lines (any process that can connect to
//! the daemon's socket sends them, and the daemon parses before it checks who is
//! asking), the line framing of a peer's byte stream (slow, endless and many peers at
//! once), sock_diag answers and `TCP_INFO` (kernel ABI that differs between kernels).
//! A panic in any of them ends a drain or the daemon, so none may panic on any input.
//!
//! Why not cargo-fuzz: it needs a nightly toolchain and its own setup, and the fuzzing
//! would then not run where the tests run. This is a small mutation fuzzer instead:
//! each target starts from valid inputs (seeds) and mutates them (bit flips, interesting
//! numbers, insertions, deletions, splices) or, for the control protocol, generates
//! requests from the protocol's own fields with hostile values, and every accepted
//! input is carried on to what the daemon does next with it (drain plans through the
//! close schedule, sockets through classification), so "accepted" also means "safe".
//!
//! Time per target: `DRAIN_FUZZ_SECONDS`, else 60 s under `CI=true`, else 3 s. The targets
//! run in parallel. `DRAIN_FUZZ_SEED` replays a run; a failure prints the seed and the
//! input. The long run (CONTRIBUTING.md, "Fuzzing"):
//! `DRAIN_FUZZ_SECONDS=3600 cargo test --release -p drain-daemon --test fuzz`.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    panic::{catch_unwind, AssertUnwindSafe},
    time::{Duration, Instant},
};

use drain_daemon::{
    control::{lines, parse_request, Request},
    drain::schedule::CloseSchedule,
    inventory::{
        classify,
        sock_diag::{parse, TcpInfo, TcpSocket},
    },
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

fn seed() -> u64 {
    match std::env::var("DRAIN_FUZZ_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("DRAIN_FUZZ_SEED={text:?} is not a number")),
        Err(_) => fastrand::u64(..),
    }
}

/// Runs `target` on inputs from `next` until the budget is spent; fails with the input
/// if the target panics. `target` says whether the parser accepted the input: a fuzzer
/// whose inputs are all refused at the first byte proves little, so the count is shown
/// with the number of inputs (on the stderr handle, which the test harness does not
/// capture).
fn fuzz(
    name: &str,
    mut next: impl FnMut(&mut fastrand::Rng) -> Vec<u8>,
    target: fn(&[u8]) -> bool,
) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let budget = budget();
    let started = Instant::now();
    let (mut execs, mut accepted) = (0u64, 0u64);
    while execs % 256 != 0 || started.elapsed() < budget {
        let input = next(&mut rng);
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!(
                "fuzz {name}: panicked (seed {seed}, input #{execs}) on {} bytes: {}",
                input.len(),
                hex(&input)
            ),
        }
        execs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {name}: {execs} inputs in {elapsed:.1}s ({:.0}/s), {accepted} accepted, \
         no panic (seed {seed})",
        execs as f64 / elapsed
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// --- Mutation --------------------------------------------------------------------------

/// Numbers that sit on the edges parsers get wrong: zero, sign bits, all ones, and the
/// lengths of the structures being parsed.
const INTERESTING: [u64; 16] = [
    0,
    1,
    3,
    4,
    16,
    20,
    72,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

/// A copy of a corpus entry with a few random mutations.
fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=input.len());
        match rng.u8(..7) {
            0 if !input.is_empty() => {
                let i = rng.usize(..input.len());
                input[i] ^= 1 << rng.u8(..8);
            }
            1 if !input.is_empty() => {
                let i = rng.usize(..input.len());
                input[i] = rng.u8(..);
            }
            2 => {
                let bytes: Vec<u8> = (0..rng.usize(1..=8)).map(|_| rng.u8(..)).collect();
                input.splice(at..at, bytes);
            }
            3 if !input.is_empty() => {
                let end = (at + rng.usize(1..=16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 => {
                let value = INTERESTING[rng.usize(..INTERESTING.len())];
                let width = [1, 2, 4, 8][rng.usize(..4)];
                let bytes = value.to_ne_bytes();
                let end = (at + width).min(input.len());
                input.splice(at..end, bytes[..width].iter().copied());
            }
            5 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                let to = (from + rng.usize(..=64)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            _ => input.truncate(at),
        }
    }
    input
}

// --- The control protocol ------------------------------------------------------------

/// A request line from the protocol's own fields, each given a valid or a hostile value
/// (wrong type, negative, beyond u64, zero), fields left out or repeated.
fn generate_request(rng: &mut fastrand::Rng) -> Vec<u8> {
    const NUMBERS: [&str; 18] = [
        "0",
        "1",
        "10",
        "100",
        "30000",
        "86400000",
        "86400001",
        "65535",
        "65536",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e3",
        "0.5",
        "null",
        "\"30s\"",
        "true",
    ];
    let number = |rng: &mut fastrand::Rng| match rng.u8(..4) {
        0 => rng.u64(..).to_string(),
        1 => rng.u64(..100_000).to_string(),
        _ => NUMBERS[rng.usize(..NUMBERS.len())].to_string(),
    };
    let pace = match rng.u8(..5) {
        0 => format!(r#"{{"spread":{}}}"#, number(rng)),
        1 => format!(r#"{{"auto":{{"max_window_ms":{}}}}}"#, number(rng)),
        2 => format!(
            r#"{{"batches":{{"percent":{},"interval_ms":{}}}}}"#,
            number(rng),
            number(rng)
        ),
        3 => r#""spread""#.to_string(),
        _ => number(rng),
    };
    let mut fields = vec![
        format!(r#""port":{}"#, number(rng)),
        format!(r#""timeout_ms":{}"#, number(rng)),
        format!(r#""poll_interval_ms":{}"#, number(rng)),
        format!(r#""quiet_period_ms":{}"#, number(rng)),
        format!(r#""close_grace_ms":{}"#, number(rng)),
        format!(r#""pace":{pace}"#),
        format!(r#""force":{}"#, ["true", "false", "1"][rng.usize(..3)]),
        format!(r#""accept_grace_ms":{}"#, number(rng)),
        format!(r#""pid":{}"#, number(rng)),
    ];
    // Leave some out, repeat others.
    for _ in 0..rng.usize(..3) {
        let i = rng.usize(..fields.len());
        fields.remove(i);
    }
    if rng.bool() {
        let i = rng.usize(..fields.len());
        fields.push(fields[i].clone());
    }
    let line = match rng.u8(..6) {
        0 => format!(
            r#"{{"request":"release","port":{},"netns_inode":{}}}"#,
            number(rng),
            number(rng)
        ),
        1 => format!(r#"{{"request":"cancel","abort":{}}}"#, number(rng)),
        2 => format!(
            r#"{{"request":"{}"}}"#,
            ["drain", "bogus", ""][rng.usize(..3)]
        ),
        _ => format!(
            r#"{{"request":"drain","plan":{{{}}},"netns_inode":{}}}"#,
            fields.join(","),
            number(rng)
        ),
    };
    line.into_bytes()
}

fn control_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"request":"drain","plan":{"port":8080,"timeout_ms":30000,"poll_interval_ms":100,"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{"batches":{"percent":25,"interval_ms":500}},"force":true,"accept_grace_ms":0,"pid":null},"netns_inode":4026531840}"#,
        r#"{"request":"drain","plan":{"port":443,"timeout_ms":86400000,"poll_interval_ms":10,"quiet_period_ms":0,"close_grace_ms":0,"pace":{"spread":0},"force":false,"accept_grace_ms":5000,"pid":1},"netns_inode":1}"#,
        r#"{"request":"drain","plan":{"port":1,"timeout_ms":1,"poll_interval_ms":60000,"quiet_period_ms":1,"close_grace_ms":1,"pace":{"auto":{"max_window_ms":10000}},"force":false,"accept_grace_ms":0},"netns_inode":0}"#,
        r#"{"request":"release","port":8080,"netns_inode":4026531840}"#,
        r#"{"request":"cancel","abort":false}"#,
    ]
    .iter()
    .map(|line| line.as_bytes().to_vec())
    .collect()
}

/// What the daemon does with a line: parse it and, for an accepted drain, compute its
/// deadlines and pace closes as the drain would.
fn control_target(input: &[u8]) -> bool {
    let line = String::from_utf8_lossy(input);
    let Ok(request) = parse_request(&line) else {
        return false;
    };
    let Request::Drain { plan, .. } = request else {
        return true;
    };
    let now = Instant::now();
    let deadline = now + plan.accept_grace + plan.timeout;
    let _ = deadline + plan.close_grace + plan.poll_interval + plan.quiet_period;
    let mut schedule = CloseSchedule::new(plan.pace, now);
    for (after, waiting) in [(0, 1000), (1, 1), (10, usize::MAX), (86_400_000, 5)] {
        let allowed = schedule.allowance(now + Duration::from_millis(after), waiting);
        assert!(allowed <= waiting);
    }
    true
}

#[test]
fn control_requests() {
    let seeds = control_seeds();
    for seed in &seeds {
        let line = String::from_utf8_lossy(seed);
        assert!(parse_request(&line).is_ok(), "seed is valid: {line}");
    }
    fuzz(
        "control request",
        move |rng| {
            if rng.bool() {
                generate_request(rng)
            } else {
                mutate(rng, &seeds)
            }
        },
        control_target,
    );
}

// --- The peer's byte stream: lines from slow, endless and many peers --------------------

/// A peer that sends `data` in chunks of `chunk` bytes, with nothing ready every other
/// time it is asked (a slow peer), then `x` for ever when `endless`.
struct Peer {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
    ready: bool,
    endless: bool,
    given: usize,
}

impl tokio::io::AsyncRead for Peer {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.ready = !self.ready;
        if !self.ready {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = self.chunk.min(buf.remaining());
        let end = (self.at + n).min(self.data.len());
        if self.at < end {
            buf.put_slice(&self.data[self.at..end]);
            self.at = end;
        } else if self.endless {
            buf.put_slice(&vec![b'x'; n]);
        }
        self.given += buf.filled().len();
        std::task::Poll::Ready(Ok(()))
    }
}

impl Peer {
    fn new(data: &[u8], chunk: usize, endless: bool) -> Peer {
        Peer {
            data: data.to_vec(),
            at: 0,
            chunk: chunk.max(1),
            ready: false,
            endless,
            given: 0,
        }
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Reads lines as the daemon does from a peer that sends `input` slowly, in chunks of
/// the first byte's size, then (when the second byte is odd) `x` for ever: every line
/// is within the bound, an endless peer is cut at it, and the reader always ends.
fn peer_lines_target(input: &[u8]) -> bool {
    let (chunk, endless, data) = match input {
        [chunk, endless, data @ ..] => (usize::from(*chunk), endless % 2 == 1, data),
        _ => return false,
    };
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let mut reader = tokio::io::BufReader::new(Peer::new(data, chunk, endless));
            let mut lines = 0;
            loop {
                match lines::next_line(&mut reader).await {
                    Ok(Some(line)) => {
                        assert!(line.len() <= lines::MAX_LINE_BYTES && !line.contains('\n'));
                        lines += 1;
                    }
                    Ok(None) => {
                        assert!(!endless, "an endless peer never ends");
                        return lines > 0;
                    }
                    Err(lines::LineError::TooLong) => return true,
                    Err(lines::LineError::NotUtf8) => continue,
                    Err(err) => panic!("{err}"),
                }
            }
        })
    })
}

#[test]
fn pod_protocol_peers() {
    let seeds: Vec<Vec<u8>> = control_seeds()
        .into_iter()
        .map(|line| [&[7u8, 0][..], &line, b"\n"].concat())
        .collect();
    fuzz(
        "pod protocol peer",
        move |rng| {
            let mut input = mutate(rng, &seeds);
            if input.len() >= 2 && rng.u8(..8) == 0 {
                // An endless peer, now and then.
                input[1] |= 1;
            }
            input
        },
        peer_lines_target,
    );
}

/// Many peers at once, each sending bytes without a newline for ever, slowly: each is
/// cut once it has sent the bound (and a read buffer's worth at most), none holds up
/// the others.
#[test]
fn pod_protocol_endless_peers_are_cut_at_the_bound() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let given: Vec<usize> = runtime.block_on(async {
        let peers: Vec<_> = (0..256)
            .map(|peer| {
                tokio::spawn(async move {
                    let mut reader =
                        tokio::io::BufReader::new(Peer::new(b"", 1 + peer * 61 % 4096, true));
                    let cut = lines::next_line(&mut reader).await;
                    assert!(matches!(cut, Err(lines::LineError::TooLong)), "{cut:?}");
                    reader.get_ref().given
                })
            })
            .collect();
        let mut given = Vec::new();
        for peer in peers {
            given.push(peer.await.unwrap());
        }
        given
    });
    let most = given.iter().max().unwrap();
    assert!(
        *most <= lines::MAX_LINE_BYTES + 8 * 1024,
        "{most} bytes read from one peer"
    );
}

// --- sock_diag answers and TCP_INFO -----------------------------------------------------

/// A `struct tcp_info` of `len` bytes with every byte set (so fields are visible).
fn tcp_info_bytes(len: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    (0..len).map(|_| rng.u8(..)).collect()
}

/// One netlink message: header, payload, padding to 4 bytes.
fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::with_capacity(len + 3);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize(m.len().next_multiple_of(4), 0);
    m
}

/// An `inet_diag_msg` as the kernel sends it, with an `INET_DIAG_INFO` attribute.
fn diag_payload(v6: bool, state: u8, info: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 72];
    p[0] = if v6 { 10 } else { 2 };
    p[1] = state;
    p[4..6].copy_from_slice(&8080u16.to_be_bytes());
    p[6..8].copy_from_slice(&40000u16.to_be_bytes());
    if v6 {
        p[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p[24..40].copy_from_slice(&Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets());
    } else {
        p[8..12].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
        p[24..28].copy_from_slice(&Ipv4Addr::new(127, 0, 0, 2).octets());
    }
    p[44..48].copy_from_slice(&1234u32.to_ne_bytes()); // cookie
    p[56..60].copy_from_slice(&0u32.to_ne_bytes()); // rqueue
    p[68..72].copy_from_slice(&5678u32.to_ne_bytes()); // inode
    p.extend_from_slice(&((4 + info.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&2u16.to_ne_bytes()); // INET_DIAG_INFO
    p.extend_from_slice(info);
    p.resize(p.len().next_multiple_of(4), 0);
    p
}

fn sock_diag_seeds() -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut seeds = Vec::new();
    for (v6, state, info_len) in [
        (false, 1, 232),
        (true, 1, 104),
        (false, 10, 248),
        (true, 8, 0),
        (false, 6, 160),
    ] {
        let info = tcp_info_bytes(info_len, &mut rng);
        let mut datagram = nlmsg(20, 1, &diag_payload(v6, state, &info));
        datagram.extend(nlmsg(20, 1, &diag_payload(!v6, 1, &info)));
        datagram.extend(nlmsg(3, 1, &0i32.to_ne_bytes())); // NLMSG_DONE
        seeds.push(datagram);
    }
    seeds.push(nlmsg(2, 1, &(-2i32).to_ne_bytes())); // NLMSG_ERROR ENOENT
    seeds.push(nlmsg(1, 1, &[])); // NLMSG_NOOP
    seeds
}

/// What the client does with an answer datagram: split it into messages, read each,
/// parse the sockets and classify them as a drain would.
fn sock_diag_target(datagram: &[u8]) -> bool {
    let mut sockets = 0;
    for message in parse::NlMessages::new(datagram) {
        let Ok(message) = message else { break };
        match parse::reply(&message) {
            Ok(Some(parse::Reply::Diag(payload))) => {
                if let Ok(socket) = parse::parse_diag_msg(payload) {
                    classify_every_way(&socket);
                    sockets += 1;
                }
            }
            Ok(_) => {}
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
    sockets > 0
}

fn classify_every_way(socket: &TcpSocket) {
    for quiet_ms in [0, 1, 1000, 86_400_000] {
        let activity = classify(socket, Duration::from_millis(quiet_ms));
        let _ = activity.to_string();
    }
}

#[test]
fn sock_diag_answers() {
    let seeds = sock_diag_seeds();
    for seed in &seeds[..5] {
        assert!(sock_diag_target(seed), "seed is a valid answer");
    }
    fuzz(
        "sock_diag answer",
        move |rng| mutate(rng, &seeds),
        sock_diag_target,
    );
}

/// `TCP_INFO` of any length and content, then the classification that reads it.
fn tcp_info_target(bytes: &[u8]) -> bool {
    let Some((&queues, info)) = bytes.split_first() else {
        return false;
    };
    let socket = TcpSocket {
        id: drain_daemon::inventory::sock_diag::SocketId {
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: "127.0.0.1:40000".parse().unwrap(),
            cookie: 1,
            interface: 0,
        },
        state: drain_daemon::inventory::sock_diag::TcpState::Established,
        recv_queue: u32::from(queues & 1),
        send_queue: u32::from(queues & 2),
        inode: 1,
        uid: 0,
        info: Some(TcpInfo::from_kernel_bytes(info)),
    };
    classify_every_way(&socket);
    true
}

#[test]
fn tcp_info() {
    let mut rng = fastrand::Rng::with_seed(11);
    let seeds: Vec<Vec<u8>> = [0, 1, 56, 104, 160, 232, 248, 300]
        .into_iter()
        .map(|len| tcp_info_bytes(len, &mut rng))
        .collect();
    fuzz("tcp_info", move |rng| mutate(rng, &seeds), tcp_info_target);
}

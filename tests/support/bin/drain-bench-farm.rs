//! `drain-bench-farm`: one process holding thousands of established TCP connections, both
//! ends, so the inventory benchmark (`cargo xtask bench`) can put 100k + 100k connections
//! in a private network namespace despite the per-process open-files hard limit (20000 on
//! the project's machines, not raisable): a farm holds 2N + 1 descriptors, so N stays
//! below about 9500 and the benchmark spreads the connections over several farms, one
//! listener address each (127.0.0.1:8080, 127.0.0.2:8080, ...), all on the same port so
//! a `sport = :8080` filter sees them all.
//!
//! Usage: `drain-bench-farm --listen ADDR --connections N [--in-flight M | --close-on-eof]`
//!
//! Raises the soft RLIMIT_NOFILE to the hard limit, binds a listener on ADDR (backlog
//! 4096), then for each of the N connections connects a client socket to it and accepts
//! the server side at once (so the accept queue never holds more than one connection).
//! The connections are idle: nothing is ever sent, except with `--in-flight M`, where the
//! first M client sockets each send an 18-byte request that the server side never reads,
//! so those connections show as in flight (18 bytes in the server socket's receive queue).
//!
//! Prints `ready N` on stdout once everything is established, then waits for SIGTERM,
//! SIGINT or end of file on stdin (so a farm whose parent died goes away by itself; give it
//! a pipe or a terminal, not /dev/null), and exits 0. The exit closes every connection.
//! Exit 2 on bad arguments, 1 on any setup error (the message names the failing step and,
//! for a connection, which one of N and a likely fix).
//!
//! With `--close-on-eof` the farm behaves like a server and its clients when a drain closes
//! connections from outside (the closing benchmark): an epoll loop (level-triggered,
//! EPOLLIN|EPOLLRDHUP) watches every socket. A server side that reads end of file (a drain
//! shut its read side through a duplicate of the descriptor) or an error is closed, as a
//! real server does; a client side that reads end of file or ECONNRESET is closed and its
//! CLOCK_MONOTONIC time (ns, comparable across processes) is recorded. Once every client
//! side is closed the farm prints `all-closed <ns>`; on exit it prints
//! `closes <t1> <t2> ...` (the client-side close times) and `resets <n>` (client sides
//! that got ECONNRESET instead of end of file; other errors count there too).
//!
//! The ephemeral port range of the namespace must leave room for N client ports per
//! listener address: the benchmark widens it to 1024-65535 and reserves the listened ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::socket::{
    self, sockopt, AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage,
};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::getpid;

const USAGE: &str =
    "usage: drain-bench-farm --listen ADDR --connections N [--in-flight M | --close-on-eof]";
/// Listen backlog (the kernel caps it at net.core.somaxconn, 4096 in a new namespace).
const BACKLOG: i32 = 4096;
/// What an in-flight client sends: a complete HTTP/1.1 request the server never reads.
const REQUEST: &[u8; 18] = b"GET / HTTP/1.1\r\n\r\n";
/// Descriptors needed besides the connections: stdio, the listener, and some slack.
const SPARE_FDS: u64 = 16;

struct Args {
    listen: SocketAddr,
    connections: usize,
    in_flight: usize,
    close_on_eof: bool,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("drain-bench-farm: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("drain-bench-farm {}: {why}", args.listen);
            ExitCode::FAILURE
        }
    }
}

/// `Ok(None)` for `--help`.
fn parse_args() -> Result<Option<Args>, String> {
    let mut listen = None;
    let mut connections = None;
    let mut in_flight = 0;
    let mut close_on_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let addr: SocketAddr = value("--listen")?
                    .parse()
                    .map_err(|e| format!("--listen: {e}"))?;
                if addr.port() == 0 {
                    return Err("--listen: give a fixed port, not 0".to_string());
                }
                listen = Some(addr);
            }
            "--connections" => {
                connections = Some(
                    value("--connections")?
                        .parse::<usize>()
                        .map_err(|e| format!("--connections: {e}"))?,
                );
            }
            "--in-flight" => {
                in_flight = value("--in-flight")?
                    .parse::<usize>()
                    .map_err(|e| format!("--in-flight: {e}"))?;
            }
            "--close-on-eof" => close_on_eof = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let listen = listen.ok_or("--listen ADDR is required")?;
    let connections = connections.ok_or("--connections N is required")?;
    if in_flight > connections {
        return Err(format!(
            "--in-flight {in_flight} is more than --connections {connections}"
        ));
    }
    if close_on_eof && in_flight > 0 {
        // The loop would read the requests, and the connections would not stay in flight.
        return Err("--close-on-eof and --in-flight exclude each other".to_string());
    }
    Ok(Some(Args {
        listen,
        connections,
        in_flight,
        close_on_eof,
    }))
}

fn run(args: &Args) -> Result<(), String> {
    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and the main thread alone takes them with sigwait.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals
        .thread_block()
        .map_err(|e| format!("blocking SIGTERM/SIGINT: {e}"))?;

    raise_open_files(args.connections)?;
    let listener = bind(args.listen).map_err(|e| format!("bind/listen: {e}"))?;

    let n = args.connections;
    let mut clients = Vec::with_capacity(n);
    let mut servers = Vec::with_capacity(n);
    for i in 1..=n {
        let client = TcpStream::connect(args.listen)
            .map_err(|e| format!("connect (connection {i} of {n}): {e}{}", hint(&e)))?;
        let (server, _) = listener
            .accept()
            .map_err(|e| format!("accept (connection {i} of {n}): {e}{}", hint(&e)))?;
        clients.push(client);
        servers.push(server);
    }
    for (i, client) in clients.iter_mut().take(args.in_flight).enumerate() {
        client
            .write_all(REQUEST)
            .map_err(|e| format!("sending the in-flight request on connection {}: {e}", i + 1))?;
    }

    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {n}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing `ready` to stdout: {e}"))?;

    watch_stdin();
    // Without --close-on-eof, closing the 2N sockets is the exit's job: kept until then.
    let (closer, kept) = if args.close_on_eof {
        (Some(spawn_closer(clients, servers)?), None)
    } else {
        (None, Some((clients, servers)))
    };
    loop {
        match stop_signals.wait() {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("sigwait: {e}")),
        }
    }
    STOP.store(true, Ordering::Relaxed);
    if let Some(closer) = closer {
        let closes = closer
            .join()
            .map_err(|_| "the close-on-eof loop panicked".to_string())??;
        let mut line = String::with_capacity(closes.times.len() * 16 + 8);
        line.push_str("closes");
        for t in &closes.times {
            line.push(' ');
            line.push_str(&t.to_string());
        }
        writeln!(stdout, "{line}\nresets {}", closes.resets)
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing the close times to stdout: {e}"))?;
    }
    drop((kept, listener));
    Ok(())
}

/// Set by the main thread when a stop signal arrived; the close-on-eof loop checks it.
static STOP: AtomicBool = AtomicBool::new(false);
/// How often the close-on-eof loop looks at [`STOP`] when nothing happens.
const STOP_POLL_MS: u16 = 50;

#[derive(Default)]
struct Closes {
    /// CLOCK_MONOTONIC ns of each client-side close, in order.
    times: Vec<u64>,
    resets: usize,
}

/// The close-on-eof loop on its own thread (it inherits the blocked stop signals). Epoll
/// tokens: client i is `i`, server i is `n + i`.
fn spawn_closer(
    clients: Vec<TcpStream>,
    servers: Vec<TcpStream>,
) -> Result<JoinHandle<Result<Closes, String>>, String> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    let n = clients.len();
    let watched = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    for (token, socket) in clients.iter().chain(&servers).enumerate() {
        epoll
            .add(socket, EpollEvent::new(watched, token as u64))
            .map_err(|e| format!("epoll_ctl(ADD) socket {token}: {e}"))?;
    }
    let mut sockets: Vec<Option<TcpStream>> =
        clients.into_iter().chain(servers).map(Some).collect();
    std::thread::Builder::new()
        .name("close-on-eof".to_string())
        .spawn(move || {
            let mut closes = Closes {
                times: Vec::with_capacity(n),
                resets: 0,
            };
            let mut events = vec![EpollEvent::empty(); 1024];
            let mut buf = [0u8; 512];
            while !STOP.load(Ordering::Relaxed) {
                let ready = match epoll.wait(&mut events, STOP_POLL_MS) {
                    Ok(ready) => ready,
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(format!("epoll_wait: {e}")),
                };
                for event in &events[..ready] {
                    let token = event.data() as usize;
                    let Some(socket) = sockets.get(token).and_then(Option::as_ref) else {
                        continue;
                    };
                    let outcome =
                        match socket::recv(socket.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                            Ok(0) => Some(false),
                            Ok(_) | Err(Errno::EAGAIN) => None,
                            Err(_) => Some(true),
                        };
                    let Some(error) = outcome else { continue };
                    // A drain may hold a duplicate of a server socket: closing ours alone
                    // would leave it registered, so deregister explicitly.
                    let _ = epoll.delete(socket);
                    sockets[token] = None;
                    if token < n {
                        closes.times.push(monotonic_ns());
                        closes.resets += usize::from(error);
                        if closes.times.len() == n {
                            let mut stdout = std::io::stdout();
                            let _ = writeln!(stdout, "all-closed {}", monotonic_ns())
                                .and_then(|()| stdout.flush());
                        }
                    }
                }
            }
            Ok(closes)
        })
        .map_err(|e| format!("cannot start the close-on-eof thread: {e}"))
}

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only mark a broken clock.
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Soft RLIMIT_NOFILE := hard, and checks that 2N + 1 descriptors (plus stdio and slack)
/// fit under it.
fn raise_open_files(connections: usize) -> Result<(), String> {
    let hard = drain_tests::raise_open_files_limit()
        .map_err(|e| format!("raising RLIMIT_NOFILE to the hard limit: {e}"))?;
    let needed = 2 * connections as u64 + 1 + SPARE_FDS;
    if needed > hard {
        return Err(format!(
            "{connections} connections need {needed} open files (both ends + listener + \
             stdio), the hard limit is {hard}: use fewer connections per farm and more farms"
        ));
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> nix::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(BACKLOG)?)?;
    Ok(TcpListener::from(fd))
}

/// A likely fix for the errors a farm runs into at scale.
fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => {
            ": out of ephemeral ports (widen net.ipv4.ip_local_port_range in the namespace, \
             or use another listener address)"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => ": out of file descriptors",
        _ => "",
    }
}

/// End of file on stdin (the parent closed the pipe or died) stops the farm like SIGTERM.
/// The thread inherits the blocked mask, so the signal it sends waits for `sigwait`.
fn watch_stdin() {
    let spawned = std::thread::Builder::new()
        .name("stdin-eof".to_string())
        .spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = kill(getpid(), Signal::SIGTERM);
        });
    if let Err(e) = spawned {
        // Signals still stop the farm; only the parent-died safety net is missing.
        eprintln!("drain-bench-farm: cannot watch stdin: {e}");
    }
}

//! Self-tests of the drain-tests support crate: every end-to-end drain test trusts these
//! pieces (namespace isolation, the HTTP server's event log, the client's view of how a
//! connection ended), so each is checked here on its own before anything builds on it.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use drain_tests::{
    connect_refused_quickly, current_thread_netns_inode, serve, spawn_demo_server, Closed,
    ConnectOutcome, EventReader, KeepAliveClient, Netns,
};
use nix::sys::signal::Signal;
use nix::sys::socket::{getpeername, setsockopt, sockopt, SockaddrStorage};

const T: Duration = Duration::from_secs(5);

/// `readlink /proc/self/ns/net` run as a child of the calling thread.
fn child_netns() -> String {
    let out = Command::new("readlink")
        .arg("/proc/self/ns/net")
        .output()
        .expect("run readlink");
    assert!(out.status.success(), "readlink failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts the in-process server on an ephemeral loopback port.
fn start_server() -> (drain_tests::Server, EventReader, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (w, events) = EventReader::channel();
    let server = serve(listener, w).unwrap();
    let addr = server.local_addr();
    assert_eq!(
        events.wait_for("listening ", T).as_deref(),
        Some(format!("listening {addr}").as_str())
    );
    (server, events, addr)
}

// ---------------------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------------------

#[test]
fn netns_gives_each_thread_its_own_ports_and_only_lo() {
    // Gate on privileges in the test thread; the workers make their own namespaces.
    let Some(_gate) = Netns::require() else {
        return;
    };
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let before = current_thread_netns_inode().unwrap();
                let ns = Netns::new().expect("Netns::new");
                assert_ne!(ns.inode(), before);
                assert_eq!(current_thread_netns_inode().unwrap(), ns.inode());
                let l = TcpListener::bind("127.0.0.1:8080").expect("bind 127.0.0.1:8080 in netns");
                let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
                let links = String::from_utf8(links.stdout).unwrap();
                let names: Vec<&str> = links
                    .lines()
                    .filter_map(|l| l.split(':').nth(1).map(str::trim))
                    .collect();
                assert_eq!(names, ["lo"], "ip -o link in a fresh netns:\n{links}");
                assert!(links.contains("UP"), "lo is not up:\n{links}");
                // Both threads hold 127.0.0.1:8080 at the same time.
                barrier.wait();
                drop(l);
                let inode = ns.inode();
                drop(ns);
                assert_eq!(current_thread_netns_inode().unwrap(), before);
                inode
            })
        })
        .collect();
    let inodes: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_ne!(inodes[0], inodes[1]);
}

#[test]
fn netns_is_inherited_by_children_and_threads_but_not_proc_self() {
    let Some(gate) = Netns::require() else { return };
    drop(gate);
    // Run in a fresh thread: it is never the process's main thread.
    std::thread::spawn(|| {
        let host = current_thread_netns_inode().unwrap();
        let host_child = child_netns();
        assert_eq!(host_child, format!("net:[{host}]"));

        let ns = Netns::new().unwrap();
        // Children spawned from this thread run in the new namespace.
        assert_eq!(child_netns(), format!("net:[{}]", ns.inode()));
        // So do threads spawned from it...
        let inner = std::thread::spawn(current_thread_netns_inode)
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(inner, ns.inode());

        // ...but /proc/self is the main thread: only /proc/thread-self/net shows this netns.
        let self_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(self_ns.to_string_lossy(), format!("net:[{host}]"));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = format!(":{:04X} ", l.local_addr().unwrap().port());
        let mine = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap();
        assert!(
            mine.contains(&port),
            "listener missing from thread-self/net/tcp"
        );
        let main = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        assert!(
            !main
                .lines()
                .any(|l| l.contains(&port) && l.contains(" 0A ")),
            "/proc/self/net/tcp unexpectedly shows this thread's netns"
        );

        drop(ns);
        assert_eq!(current_thread_netns_inode().unwrap(), host);
        assert_eq!(child_netns(), host_child);
    })
    .join()
    .unwrap();
}

#[test]
fn connect_to_closed_port_in_fresh_netns_is_refused_at_once() {
    let Some(_ns) = Netns::require() else { return };
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    match connect_refused_quickly(addr) {
        ConnectOutcome::Refused(d) => assert!(d < Duration::from_millis(500), "took {d:?}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    let _l = TcpListener::bind(addr).unwrap();
    assert_eq!(connect_refused_quickly(addr), ConnectOutcome::Connected);
}

// ---------------------------------------------------------------------------------------
// In-process HTTP server and client (no privileges needed: ephemeral loopback port)
// ---------------------------------------------------------------------------------------

#[test]
fn keep_alive_two_requests_on_one_connection() {
    let (_server, events, addr) = start_server();
    let mut c = KeepAliveClient::connect(addr).unwrap();
    let peer = c.local_addr();
    for _ in 0..2 {
        let r = c.request("GET", "/", b"").unwrap();
        assert_eq!((r.status, r.body_text().as_str()), (200, "ok\n"));
        assert_eq!(r.header("connection"), None);
    }
    assert_eq!(
        events.wait_for("accepted", T),
        Some(format!("accepted {peer}"))
    );
    for _ in 0..2 {
        assert_eq!(
            events.wait_for("request", T),
            Some(format!("request {peer} GET /"))
        );
        assert_eq!(
            events.wait_for("response", T),
            Some(format!("response {peer} 200 3"))
        );
    }
    let accepted = events
        .all_lines()
        .iter()
        .filter(|l| l.starts_with("accepted"))
        .count();
    assert_eq!(accepted, 1, "both requests must use one connection");
    // Client closes: the server logs eof and closes too.
    drop(c);
    assert_eq!(events.wait_for("eof", T), Some(format!("eof {peer}")));
}

#[test]
fn post_body_sleep_and_routes() {
    let (_server, events, addr) = start_server();
    let mut c = KeepAliveClient::connect(addr).unwrap();

    let r = c.request("POST", "/sleep/0", b"hello").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text(), "slept 0 received 5\n");

    let start = Instant::now();
    let r = c.request("GET", "/sleep/300", b"").unwrap();
    let took = start.elapsed();
    assert_eq!((r.status, r.body_text().as_str()), (200, "slept 300\n"));
    assert!(took >= Duration::from_millis(300), "took {took:?}");

    assert_eq!(c.request("GET", "/nope", b"").unwrap().status, 404);
    assert_eq!(c.request("DELETE", "/", b"").unwrap().status, 405);
    assert_eq!(c.request("POST", "/", b"x").unwrap().status, 200);
    // Still the same connection after all that.
    let peer = c.local_addr();
    let lines = events.all_lines();
    assert!(lines.contains(&format!("request {peer} POST /sleep/0")));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("accepted")).count(),
        1
    );
}

#[test]
fn stream_response_is_in_flight_while_written() {
    let (_server, events, addr) = start_server();
    let mut c = KeepAliveClient::connect(addr).unwrap();
    let peer = c.local_addr();
    let start = Instant::now();
    c.send_request("GET", "/stream/5", b"").unwrap();
    assert_eq!(
        events.wait_for("request", T),
        Some(format!("request {peer} GET /stream/5"))
    );
    // Request read, response not finished: in flight.
    assert!(!events.all_lines().iter().any(|l| l.starts_with("response")));
    let r = c.read_response().unwrap();
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "took {took:?}");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 5 * 1024);
    assert!(r.body[..1024].iter().all(|b| *b == b'a'));
    assert!(r.body[4 * 1024..].iter().all(|b| *b == b'e'));
    assert_eq!(
        events.wait_for("response", T),
        Some(format!("response {peer} 200 5120"))
    );
    // And the connection is still usable.
    assert_eq!(c.request("GET", "/", b"").unwrap().status, 200);
}

#[test]
fn connection_close_is_honoured_and_bad_requests_get_400() {
    let (_server, events, addr) = start_server();
    let mut c = KeepAliveClient::connect(addr).unwrap();
    let peer = c.local_addr();
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(c.wait_closed(T), Closed::Eof);
    assert_eq!(events.wait_for("close", T), Some(format!("close {peer}")));

    let mut c = KeepAliveClient::connect(addr).unwrap();
    c.send_raw(b"this is not http\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 400);
    assert_eq!(c.wait_closed(T), Closed::Eof);

    // A request cut short by the client is an error event, not a panic.
    let mut c = KeepAliveClient::connect(addr).unwrap();
    let peer = c.local_addr();
    c.send_raw(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    c.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        events.wait_for(&format!("error {peer}"), T),
        Some(format!("error {peer} UnexpectedEof"))
    );
}

// ---------------------------------------------------------------------------------------
// wait_closed against raw server-side sockets
// ---------------------------------------------------------------------------------------

fn raw_pair() -> (KeepAliveClient, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = KeepAliveClient::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn wait_closed_sees_fin_as_eof() {
    let (mut c, s) = raw_pair();
    assert_eq!(c.wait_closed(Duration::from_millis(200)), Closed::StillOpen);
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(c.wait_closed(T), Closed::Eof);
}

#[test]
fn wait_closed_sees_linger_zero_close_as_reset() {
    let (mut c, s) = raw_pair();
    setsockopt(
        &s,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(s);
    assert_eq!(c.wait_closed(T), Closed::Reset);
}

// ---------------------------------------------------------------------------------------
// The drain-demo-server binary
// ---------------------------------------------------------------------------------------

#[test]
fn demo_server_in_netns_serves_v4_and_v6_and_exits_0_on_sigterm() {
    let Some(ns) = Netns::require() else { return };
    let (mut server, events) =
        spawn_demo_server(["--listen", "127.0.0.1:8080", "--listen", "[::1]:8080"]);
    let a4 = events.wait_listening(T).expect("listening line (v4)");
    let a6 = events.wait_listening(T).expect("listening line (v6)");
    assert_eq!(a4, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(a6, "[::1]:8080".parse().unwrap());
    // It runs in our namespace.
    let link = std::fs::read_link(format!("/proc/{}/ns/net", server.pid())).unwrap();
    assert_eq!(link.to_string_lossy(), format!("net:[{}]", ns.inode()));

    for addr in [a4, a6] {
        let mut c = KeepAliveClient::connect(addr).unwrap();
        assert_eq!(c.request("GET", "/", b"").unwrap().status, 200);
        assert_eq!(c.request("GET", "/", b"").unwrap().status, 200);
        let peer = c.local_addr();
        assert_eq!(
            events.wait_for(&format!("response {peer}"), T),
            Some(format!("response {peer} 200 3"))
        );
    }

    server.signal(Signal::SIGTERM).unwrap();
    let status = server.wait_timeout(T).unwrap().expect("exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        events.wait_for("stopping", T).as_deref(),
        Some("stopping SIGTERM")
    );
    assert!(matches!(
        connect_refused_quickly(a4),
        ConnectOutcome::Refused(_)
    ));
}

#[test]
fn demo_server_reuseport_and_bad_args() {
    let Some(_ns) = Netns::require() else { return };
    let args = ["--listen", "127.0.0.1:8080", "--reuseport"];
    let (_a, ev_a) = spawn_demo_server(args);
    let (_b, ev_b) = spawn_demo_server(args);
    assert!(ev_a.wait_listening(T).is_some(), "first reuseport server");
    assert!(ev_b.wait_listening(T).is_some(), "second reuseport server");

    // Without --reuseport the port is taken: bind error, exit 1.
    let (mut c, _) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    let st = c.wait_timeout(T).unwrap().expect("exits");
    assert_eq!(st.code(), Some(1));

    let (mut c, _) = spawn_demo_server(["--bogus"]);
    let st = c.wait_timeout(T).unwrap().expect("exits");
    assert_eq!(st.code(), Some(2));
}

// ---------------------------------------------------------------------------------------
// The graceful close drain-daemon performs, done by hand: pidfd_getfd + shutdown()
// ---------------------------------------------------------------------------------------

/// Duplicates every socket of `pid` and shuts down (SHUT_RDWR) the one whose peer is `peer`.
fn shutdown_from_outside(pid: u32, peer: SocketAddr) -> bool {
    // SAFETY: plain syscalls with integer arguments; the returned fds are owned here.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut found = false;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let fd: RawFd = entry.file_name().to_string_lossy().parse().unwrap();
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            continue;
        }
        let dup = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
        let Ok(p) = getpeername::<SockaddrStorage>(dup.as_raw_fd()) else {
            continue; // a listener
        };
        let p = match (p.as_sockaddr_in(), p.as_sockaddr_in6()) {
            (Some(v4), _) => SocketAddr::from(std::net::SocketAddrV4::from(*v4)),
            (_, Some(v6)) => SocketAddr::from(std::net::SocketAddrV6::from(*v6)),
            _ => continue,
        };
        if p == peer {
            nix::sys::socket::shutdown(dup.as_raw_fd(), nix::sys::socket::Shutdown::Both).unwrap();
            found = true;
        }
    }
    found
}

#[test]
fn demo_server_logs_eof_when_idle_socket_is_shut_down_from_outside() {
    let Some(_ns) = Netns::require() else { return };
    let (server, events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    let addr = events.wait_listening(T).unwrap();
    let mut idle = KeepAliveClient::connect(addr).unwrap();
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);
    let peer = idle.local_addr();
    events.wait_for(&format!("response {peer}"), T).unwrap();

    assert!(
        shutdown_from_outside(server.pid(), peer),
        "server socket not found"
    );
    assert_eq!(idle.wait_closed(T), Closed::Eof);
    assert_eq!(events.wait_for("eof", T), Some(format!("eof {peer}")));
    // The server is unaffected otherwise.
    let mut c = KeepAliveClient::connect(addr).unwrap();
    assert_eq!(c.request("GET", "/", b"").unwrap().status, 200);
}

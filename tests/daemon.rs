//! drainctl through drain-daemon: the same drain, run by the daemon over its control
//! socket, and the errors a user sees when the daemon is not there. Also the daemon's
//! life under systemd: the notify protocol, socket activation, and a stop in the middle
//! of a drain, which must not cut it.

use std::{
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    time::{Duration, Instant},
};

use drain_tests::{
    bin_path, busy_client, daemon_socket_path, drain_phase, drain_through_daemon, idle_client,
    run_drainctl, spawn_daemon, spawn_daemon_with, spawn_demo_server, spawn_drainctl,
    spawn_socket_activated_daemon, start_server, systemd::require_tool, ChildGuard, Closed,
    KeepAliveClient, Netns, SERVING,
};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn drainctl_drains_through_the_daemon() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("drain");
    let (_daemon, daemon_log) = spawn_daemon(&socket);
    let (_server, _events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    let addr = _events.wait_listening(5 * SECOND).unwrap();
    let mut idle = KeepAliveClient::connect(addr).unwrap();
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);

    let output = drain_through_daemon(
        socket.to_str().unwrap(),
        &["--port", "8080", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    daemon_log
        .wait_for_line(5 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon ran the drain");

    let release = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "release",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(release.code, Some(0));
    assert!(
        release.stdout.contains("accepted again"),
        "{}",
        release.stdout
    );
    KeepAliveClient::connect(addr).expect("accepted after release through the daemon");
}

#[test]
fn daemon_errors_reach_drainctl_with_their_exit_code() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("errors");
    let (_daemon, _log) = spawn_daemon(&socket);
    let output = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "drain",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(output.code, Some(3));
    assert!(
        output
            .stderr_text()
            .contains("no TCP listener on port 8080"),
        "{}",
        output.stderr_text()
    );
}

#[test]
fn an_unreachable_daemon_named_explicitly_is_an_environment_error() {
    let output = run_drainctl(
        [
            "--daemon-socket",
            "/nonexistent/drain-daemon.sock",
            "drain",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(output.code, Some(3));
    assert!(
        output.stderr_text().contains("is drain-daemon running?"),
        "{}",
        output.stderr_text()
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("twice");
    let (_daemon, _log) = spawn_daemon(&socket);
    let second = std::process::Command::new(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another drain-daemon serves"));
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let file = daemon_socket_path("not-a-socket");
    let dir = file.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&file, b"precious").unwrap();
    let link = dir.join("link.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&file, &link).unwrap();

    for (path, kind) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let mut daemon = ChildGuard(
            std::process::Command::new(bin_path("drain-daemon"))
                .arg("--socket")
                .arg(path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = daemon.wait_timeout(10 * SECOND).unwrap();
        let mut stderr = String::new();
        if status.is_some() {
            std::io::Read::read_to_string(&mut daemon.0.stderr.take().unwrap(), &mut stderr)
                .unwrap();
        }
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"precious",
            "--socket {kind}"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(status.and_then(|s| s.code()), Some(3), "{stderr}");
        assert!(
            stderr.contains(&format!("{} is {kind}, not a socket", path.display())),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The messages a `Type=notify` service sends, read from a socket standing in for
/// systemd's `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(name: &str) -> NotifySocket {
        let path = daemon_socket_path(name).with_file_name("notify.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        NotifySocket { socket, path }
    }

    /// Every message received so far, one line per state (`READY=1`, `STATUS=...`).
    fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(len) = self.socket.recv(&mut buf) {
            lines.extend(
                String::from_utf8_lossy(&buf[..len])
                    .lines()
                    .map(str::to_string),
            );
        }
        lines
    }
}

#[test]
fn stopping_the_daemon_mid_drain_lets_the_drain_report() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("stop");
    let notify = NotifySocket::bind("stop");
    let mut command = std::process::Command::new(bin_path("drain-daemon"));
    command
        .arg("--socket")
        .arg(&socket)
        .env("NOTIFY_SOCKET", &notify.path);
    let (mut daemon, daemon_log) = spawn_daemon_with(command, SERVING);
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/3000");
    let mut idle = idle_client(addr);

    let drain = spawn_drainctl([
        "--daemon-socket",
        socket.to_str().unwrap(),
        "drain",
        "--port",
        "8080",
        "--quiet-period",
        "200ms",
        "--timeout",
        "20s",
        "--json",
    ]);
    daemon_log
        .wait_for_line(10 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon runs the drain");
    daemon
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM the daemon");
    daemon_log
        .wait_for_line(5 * SECOND, |line| {
            line.contains("waiting for running drains")
        })
        .expect("the daemon waits for the drain instead of exiting");
    assert!(
        !socket.exists(),
        "a stopping daemon removes its socket, so new drainctl runs drain on their own"
    );

    let output = drain.wait(30 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["outcome"], "drained");
    // The idle connection at once, the busy one once answered.
    assert_eq!(report["closed_gracefully"], 2, "{report}");
    assert_eq!(report["closed_abortively"], 0, "{report}");
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    let answer = busy
        .read_response()
        .expect("the in-flight request is answered");
    assert_eq!(answer.status, 200);
    let status = daemon
        .wait_timeout(10 * SECOND)
        .unwrap()
        .expect("the daemon exits once its drain reported");
    assert!(status.success(), "daemon exit: {status:?}");

    let messages = notify.lines();
    let position = |wanted: &dyn Fn(&str) -> bool| {
        messages
            .iter()
            .position(|line| wanted(line))
            .unwrap_or_else(|| panic!("notify messages {messages:?}"))
    };
    let ready = position(&|line| line == "READY=1");
    let running =
        position(&|line| line == "STATUS=serving drainctl, 1 drain(s) in progress (ports 8080)");
    let stopping = position(&|line| line == "STOPPING=1");
    let waiting = position(&|line| line.starts_with("STATUS=stopping: waiting for 1 drain"));
    position(&|line| line.starts_with("EXTEND_TIMEOUT_USEC="));
    assert!(ready < running && running < stopping, "{messages:?}");
    assert!(waiting < messages.len(), "{messages:?}");
}

#[test]
fn the_daemon_serves_a_socket_passed_by_socket_activation() {
    let Some(activate) = require_tool("systemd-socket-activate") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("activated");
    // The drainctl below is the first connection, which starts the daemon.
    let (_daemon, daemon_log) = spawn_socket_activated_daemon(&activate, &socket);
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let output = drain_through_daemon(
        socket.to_str().unwrap(),
        &["--port", "8080", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    daemon_log
        .wait_for_line(5 * SECOND, |line| {
            line.contains(SERVING) && line.contains("activated=true")
        })
        .expect("the daemon served the inherited socket");
    daemon_log
        .wait_for_line(5 * SECOND, |line| line.contains("drain requested"))
        .expect("the activated daemon ran the drain");
}

#[test]
fn a_stopping_daemon_sends_new_drains_standalone() {
    let Some(activate) = require_tool("systemd-socket-activate") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    // Under socket activation the socket outlives the daemon's stop (systemd holds it),
    // so a drainctl can still reach a stopping daemon: it must be told to drain alone.
    let socket = daemon_socket_path("stopping");
    let (daemon, daemon_log) = spawn_socket_activated_daemon(&activate, &socket);
    let (_old, old_events, old_addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(old_addr, &old_events, "/sleep/3000");
    let socket_arg = socket.to_str().unwrap();
    let running = spawn_drainctl([
        "--daemon-socket",
        socket_arg,
        "drain",
        "--port",
        "8080",
        "--json",
    ]);
    daemon_log
        .wait_for_line(10 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon runs the first drain");
    daemon
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM the daemon");
    daemon_log
        .wait_for_line(5 * SECOND, |line| {
            line.contains("waiting for running drains")
        })
        .expect("the daemon is stopping");

    let (_other, _other_events, other_addr) = start_server(["--listen", "127.0.0.1:9090"]);
    let mut idle = idle_client(other_addr);
    let late = drain_through_daemon(
        socket_arg,
        &["--port", "9090", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(late.code, Some(0), "log:\n{}", late.stderr_text());
    assert!(
        late.stderr_text().contains("draining standalone"),
        "{}",
        late.stderr_text()
    );
    assert_eq!(late.json()["closed_gracefully"], 1);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    daemon_log
        .wait_for_line(5 * SECOND, |line| line.contains("drain-daemon is stopping"))
        .expect("the daemon refused the late drain");

    let first = running.wait(30 * SECOND);
    assert_eq!(first.code, Some(0), "log:\n{}", first.stderr_text());
    assert_eq!(busy.read_response().expect("answered").status, 200);
}

/// The daemon's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// One reply line from a raw control connection, or the error reading it gave.
fn reply_line(stream: &std::os::unix::net::UnixStream) -> std::io::Result<String> {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line)?;
    Ok(line)
}

/// Each drain used to leave a task forwarding the program's log records running for
/// good, holding the log ring buffer's descriptor: a daemon draining on every restart
/// ran out of descriptors. Five drains later it holds as many as after one.
#[test]
fn the_daemon_keeps_nothing_of_a_finished_drain() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("leak");
    let (daemon, _log) = spawn_daemon(&socket);
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let drain = || {
        let output = drain_through_daemon(socket.to_str().unwrap(), &["--port", "8080"]);
        assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    };
    // A finished drain's connection and tasks wind down a moment after drainctl has its
    // report: count once the daemon holds no more than it did before.
    let settled = |at_most: usize| {
        let started = std::time::Instant::now();
        loop {
            let open = open_fds(daemon.pid());
            if open <= at_most || started.elapsed() > 3 * SECOND {
                return open;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = open_fds(daemon.pid());
    drain();
    let after_one = settled(before + 1);
    for _ in 0..4 {
        drain();
    }
    assert_eq!(
        settled(after_one),
        after_one,
        "descriptors kept by finished drains"
    );
}

/// The request line is read only up to its limit and only for a while: a client cannot
/// make the daemon buffer without end, nor hold a connection open by saying nothing.
#[test]
fn an_oversized_or_missing_request_gets_an_error_not_a_wait() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("limits");
    let (_daemon, _log) = spawn_daemon(&socket);

    let mut flood = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    flood.set_read_timeout(Some(10 * SECOND)).unwrap();
    // More than the limit, with no newline: the daemon answers once it has read the limit.
    let _ = std::io::Write::write_all(&mut flood, &vec![b'x'; 64 * 1024]);
    let reply = reply_line(&flood).expect("a reply before the read timeout");
    assert!(reply.contains("request longer than"), "{reply}");

    let silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    silent.set_read_timeout(Some(10 * SECOND)).unwrap();
    let started = std::time::Instant::now();
    let reply = reply_line(&silent).expect("a reply before the read timeout");
    assert!(reply.contains("no request within"), "{reply}");
    assert!(started.elapsed() < 8 * SECOND, "{:?}", started.elapsed());
}

/// Out of descriptors, `accept` fails (EMFILE): the daemon used to exit then, dropping
/// every drain in progress. It waits it out and serves again once descriptors are free.
#[test]
fn a_daemon_out_of_descriptors_goes_on_serving() {
    let Some(prlimit) = require_tool("prlimit") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("emfile");
    let mut command = std::process::Command::new(prlimit);
    command
        .arg("--nofile=48:48")
        .arg(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(&socket);
    let (mut daemon, log) = spawn_daemon_with(command, SERVING);
    let clients: Vec<_> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    log.wait_for_line(5 * SECOND, |line| {
        line.contains("accepting a control connection failed")
    })
    .expect("accept ran out of descriptors");
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
    drop(clients);

    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _idle = idle_client(addr);
    let output = drain_through_daemon(socket.to_str().unwrap(), &["--port", "8080", "--json"]);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    log.wait_for_line(5 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon ran the drain");
}

/// The daemon holds BPF, SOCK_DESTROY and ptrace rights: it does for a peer only what
/// that peer could do itself. Root without those capabilities (a container's root
/// that can reach the socket) is refused, and told what it lacks.
#[test]
fn a_root_peer_without_the_capabilities_of_a_drain_gets_nothing_done() {
    let Some(setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("deputy");
    let (_daemon, _log) = spawn_daemon(&socket);
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let mut command = std::process::Command::new(setpriv);
    command
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
        ])
        .arg(bin_path("drainctl"))
        .args(["--daemon-socket", socket.to_str().unwrap()])
        .args(["drain", "--port", "8080"]);
    let output = drain_tests::spawn_drainctl_with(&mut command).wait(20 * SECOND);
    assert_eq!(output.code, Some(3), "{}", output.stderr_text());
    assert!(
        output.stderr_text().contains("lacks CAP_NET_ADMIN"),
        "{}",
        output.stderr_text()
    );
    // Nothing was done: the connection is open and served, new clients are accepted.
    drain_tests::assert_untouched(&mut idle, addr);
}

/// A request names the network namespace it is for; the daemon acts only when the peer
/// really is in the daemon's namespace, so a client elsewhere cannot have this
/// namespace's connections cut by naming it.
#[test]
fn a_peer_in_another_network_namespace_cannot_claim_the_daemons() {
    let Some(netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("claim");
    let (_daemon, _log) = spawn_daemon(&socket);
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let daemons_netns = netns.inode();
    let reply = std::thread::spawn(move || {
        let _elsewhere = Netns::new().expect("another network namespace");
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(10 * SECOND)).unwrap();
        let request = format!(
            r#"{{"request":"drain","plan":{{"port":8080,"timeout_ms":5000,"poll_interval_ms":100,"quiet_period_ms":0,"close_grace_ms":2000,"pace":{{"spread":0}},"force":true,"accept_grace_ms":0}},"netns_inode":{daemons_netns}}}"#
        );
        std::io::Write::write_all(&mut stream, format!("{request}\n").as_bytes()).unwrap();
        reply_line(&stream).unwrap()
    })
    .join()
    .unwrap();
    assert!(reply.contains("other_namespace"), "{reply}");
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);
}

/// A daemon killed in the middle of a drain (a stop lets drains finish; a crash or a
/// SIGKILL does not) used to leave drainctl with exit 4 and the service's stop without
/// its drain. drainctl carries on standalone, takes over the pinned refusal, and the
/// drain ends as it would have.
#[test]
fn drainctl_carries_on_standalone_when_the_daemon_dies_midway() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("killed");
    let (daemon, daemon_log) = spawn_daemon(&socket);
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/2500");
    let drainctl = spawn_drainctl([
        "--daemon-socket",
        socket.to_str().unwrap(),
        "drain",
        "--port",
        "8080",
        "--json",
    ]);
    daemon_log
        .wait_for_line(5 * SECOND, |line| {
            line.contains("new connections are refused")
        })
        .expect("the daemon runs the drain");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let output = drainctl.wait(30 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    assert!(
        output.stderr_text().contains("carrying on standalone"),
        "{}",
        output.stderr_text()
    );
    assert_eq!(busy.read_response().expect("answered").status, 200);
    assert_eq!(busy.wait_closed(5 * SECOND), Closed::Eof);
}

/// A peer that is not root is answered from its socket credentials alone: nothing it
/// sends is read. Saying nothing gets the refusal at once (not "no request within 5s"),
/// and a megabyte with no newline gets it too (not "request longer than 16384 bytes"
/// after the daemon read that much). The socket is opened to everyone here, as an
/// administrator loosening its mode would.
#[test]
fn a_peer_that_is_not_root_is_refused_before_anything_it_sends_is_read() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("nobody");
    let (_daemon, _log) = spawn_daemon(&socket);
    let open_to_all = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open_to_all(socket.parent().unwrap(), 0o755);
    open_to_all(&socket, 0o666);
    let as_nobody = |args: &[&str]| {
        let output = std::process::Command::new(bin_path("drain-control-client"))
            .arg(&socket)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // Refused, not answered "no request within 5s": no timing needed to tell them apart.
    let silent = as_nobody(&[]);
    assert!(
        silent.starts_with("reply ") && silent.contains("serves root only"),
        "{silent}"
    );
    let flood = as_nobody(&["--send-junk", "1048576"]);
    assert!(
        flood.contains("write failed") && flood.contains("serves root only"),
        "{flood}"
    );
}

/// A client that asks for a drain and then reads nothing: its progress lines (a pass
/// every 10 ms) fill the socket within seconds. The daemon must neither hold the drain
/// on the full socket (its passes, its deadline) nor queue the lines without end: the
/// drain reaches its deadline on time, the daemon answers others meanwhile, and once
/// the client reads it gets the few lines the socket and the writer's queue held, then
/// the report. The updates in between were dropped.
#[test]
fn a_client_that_stops_reading_holds_up_neither_its_drain_nor_the_daemon() {
    let Some(netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("slow-reader");
    let (_daemon, _log) = spawn_daemon(&socket);
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");
    let request = format!(
        r#"{{"request":"drain","plan":{{"port":8080,"timeout_ms":20000,"poll_interval_ms":10,"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{{"spread":0}},"force":false,"accept_grace_ms":0}},"netns_inode":{}}}"#,
        netns.inode()
    );
    let mut client = ChildGuard(
        std::process::Command::new(bin_path("drain-control-client"))
            .arg(&socket)
            .args(["--send", &request, "--read-when-told"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();

    let release = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "release",
            "--port",
            "9090",
        ],
        20 * SECOND,
    );
    assert_eq!(release.code, Some(0), "{}", release.stderr_text());
    let phase = loop {
        let phase = drain_phase(8080);
        if phase.as_deref().is_some_and(|phase| phase != "draining") {
            break phase;
        }
        assert!(
            started.elapsed() < 60 * SECOND,
            "the drain is still {phase:?} 60 s into its 20 s timeout: held up by its client"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(phase.as_deref(), Some("deadline_reached"));

    let mut tell = client.0.stdin.take().unwrap();
    tell.write_all(b"read now\n").unwrap();
    let mut read = String::new();
    std::io::Read::read_to_string(&mut client.0.stdout.take().unwrap(), &mut read).unwrap();
    let replies: Vec<serde_json::Value> = read
        .lines()
        .filter_map(|line| line.strip_prefix("reply "))
        .map(|reply| serde_json::from_str(reply).unwrap())
        .collect();
    let (report, progress) = replies.split_last().expect("a reply");
    assert_eq!(report["reply"], "report", "{report}");
    assert_eq!(report["outcome"], "deadline_reached", "{report}");
    let last_progress_ms = progress
        .last()
        .and_then(|p| p["elapsed_ms"].as_u64())
        .expect("progress before the report");
    let report_ms = report["elapsed_ms"].as_u64().unwrap();
    eprintln!(
        "{} progress lines, the last at {last_progress_ms} ms, the report at {report_ms} ms",
        progress.len()
    );
    assert!(
        report_ms - last_progress_ms >= 3000,
        "the client got every pass's progress ({} lines, the last at {last_progress_ms} ms): \
         they were queued for it, not dropped",
        progress.len()
    );
}

/// A drain whose scan is stuck in a system call for a minute (a failpoint stalls it,
/// as a `/proc` read of a stuck process or a huge sock_diag dump would), in a daemon
/// with a single async worker: another client is answered, another drain runs to its
/// end, and the stuck drain reports at its own deadline, not when its scan returns.
#[test]
fn a_drain_stuck_in_a_system_call_holds_up_neither_the_daemon_nor_deadlines() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("stuck");
    let socket_arg = socket.to_str().unwrap();
    let mut command = std::process::Command::new(bin_path("drain-daemon"));
    command
        .arg("--socket")
        .arg(&socket)
        .env("TOKIO_WORKER_THREADS", "1")
        // The drain's setup scans the port once; its passes' scans stall.
        .env("DRAIN_FAILPOINTS", "scan:8081=stall-60000 from=2");
    let (_daemon, log) = spawn_daemon_with(command, SERVING);
    let (_stuck_server, events, stuck_addr) = start_server(["--listen", "127.0.0.1:8081"]);
    let _busy = busy_client(stuck_addr, &events, "/sleep/60000");
    let stuck = spawn_drainctl([
        "--daemon-socket",
        socket_arg,
        "drain",
        "--port",
        "8081",
        "--timeout",
        "10s",
        "--json",
    ]);
    log.wait_for_line(10 * SECOND, |line| line.contains("failpoint fired"))
        .expect("the drain's scan stalls");

    let release = run_drainctl(
        ["--daemon-socket", socket_arg, "release", "--port", "9090"],
        20 * SECOND,
    );
    assert_eq!(release.code, Some(0), "{}", release.stderr_text());
    let (_other, _other_events, other_addr) = start_server(["--listen", "127.0.0.1:8082"]);
    let mut idle = idle_client(other_addr);
    let other = drain_through_daemon(
        socket_arg,
        &["--port", "8082", "--quiet-period", "200ms", "--json"],
    );
    assert_eq!(other.code, Some(0), "{}", other.stderr_text());
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);

    let output = stuck.wait(40 * SECOND);
    assert_eq!(output.code, Some(1), "{}", output.stderr_text());
    assert_eq!(output.json()["outcome"], "deadline_reached");
}

/// A daemon that takes connections but answers nothing (stopped with SIGSTOP: its
/// socket still queues connections and requests).
fn silent_daemon(name: &str) -> (ChildGuard, std::path::PathBuf) {
    let socket = daemon_socket_path(name);
    let (daemon, _log) = spawn_daemon(&socket);
    daemon.signal(nix::sys::signal::Signal::SIGSTOP).unwrap();
    (daemon, socket)
}

/// `drainctl -v --daemon-socket SOCKET drain --port 8080 ARGS...`, once it has sent its
/// request (its signal handlers are in place by then).
fn drainctl_asking(socket: &std::path::Path, args: &[&str]) -> drain_tests::Drainctl {
    let mut all = vec!["-v", "--daemon-socket", socket.to_str().unwrap(), "drain"];
    all.extend_from_slice(&["--port", "8080"]);
    all.extend_from_slice(args);
    let drainctl = spawn_drainctl(all);
    drainctl
        .log()
        .wait_for_line(10 * SECOND, |line| line.contains("using drain-daemon"))
        .expect("drainctl talks to the daemon");
    std::thread::sleep(Duration::from_millis(500));
    drainctl
}

/// SIGTERM or SIGINT ends drainctl at once with its documented code (143, 130), whatever
/// the daemon does: one that answers nothing gets the cancel line and a second at most.
#[test]
fn a_signal_ends_drainctl_at_once_even_when_the_daemon_answers_nothing() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_daemon, socket) = silent_daemon("silent-signal");
    for (signal, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let drainctl = drainctl_asking(&socket, &["--timeout", "60s"]);
        let signalled = Instant::now();
        drainctl.signal(signal);
        let output = drainctl.wait(10 * SECOND);
        let took = signalled.elapsed();
        eprintln!("{signal}: drainctl exited {:?} after {took:?}", output.code);
        assert_eq!(output.code, Some(code), "{}", output.stderr_text());
        assert!(took < 3 * SECOND, "{signal}: drainctl took {took:?}");
        assert!(
            output
                .stderr_text()
                .contains("stopped by a signal before drain-daemon reported"),
            "{}",
            output.stderr_text()
        );
    }
}

/// drainctl waits for a silent daemon as long as the drain itself could take (accept
/// grace, timeout, close grace) and a margin, then fails (exit 4) saying so.
#[test]
fn drainctl_waits_for_a_silent_daemon_no_longer_than_its_own_timeout() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_daemon, socket) = silent_daemon("silent-timeout");
    let started = Instant::now();
    let drainctl = drainctl_asking(&socket, &["--timeout", "1s", "--close-grace", "0s"]);
    let output = drainctl.wait(30 * SECOND);
    let took = started.elapsed();
    eprintln!("drainctl gave up after {took:?}");
    assert_eq!(output.code, Some(4), "{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("drain-daemon did not report within 6s"),
        "{}",
        output.stderr_text()
    );
    assert!(took < 10 * SECOND, "drainctl took {took:?}");
}

/// Someone who can write the socket's directory swaps every socket that appears in it
/// for a symlink to a root file of mode 0600 (as fast as it can, while the daemon starts,
/// 200 times): the daemon never gives that file the socket's mode 0666, because it never
/// changes a mode by path.
#[test]
fn a_symlink_swapped_in_for_the_pod_socket_never_gets_its_mode() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let root_socket = daemon_socket_path("swap-root");
    let pod_socket = daemon_socket_path("swap-pods");
    let dir = pod_socket.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let canary = std::env::temp_dir().join(format!("drain-test-{}-canary", std::process::id()));
    std::fs::write(&canary, b"root's").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (dir, canary, stop) = (dir.clone(), canary.clone(), stop.clone());
        move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let is_socket = entry
                        .file_type()
                        .is_ok_and(|kind| std::os::unix::fs::FileTypeExt::is_socket(&kind));
                    if is_socket && std::fs::remove_file(entry.path()).is_ok() {
                        let _ = std::os::unix::fs::symlink(&canary, entry.path());
                        swaps += 1;
                    }
                }
            }
            swaps
        }
    });
    let mut served = 0;
    for start in 0..200 {
        // What the swapper left at the path would only make the daemon refuse to start.
        let _ = std::fs::remove_file(&pod_socket);
        let mut command = std::process::Command::new(bin_path("drain-daemon"));
        command
            .arg("--socket")
            .arg(&root_socket)
            .arg("--pod-socket")
            .arg(&pod_socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut daemon = ChildGuard(command.spawn().unwrap());
        let log =
            drain_tests::EventReader::from_reader("drain-daemon", daemon.0.stderr.take().unwrap());
        if log
            .wait_for_line(10 * SECOND, |line| line.contains(SERVING))
            .is_some()
        {
            served += 1;
        }
        drop(daemon);
        let mode = std::fs::metadata(&canary).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the canary's mode after start {start}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    eprintln!("{served} of 200 starts served; {swaps} sockets swapped for a symlink");
    assert!(swaps >= 100, "the race was not run: {swaps} swaps");
    std::fs::remove_file(&canary).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The port's lock is taken before the accept grace: a second drain of a port in its
/// grace is refused at once (exit 3, who holds it), not after a grace of its own.
#[test]
fn a_second_drain_of_a_port_is_refused_before_its_accept_grace() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = daemon_socket_path("grace-lock");
    let socket_arg = socket.to_str().unwrap();
    let (_daemon, log) = spawn_daemon(&socket);
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let grace = ["--port", "8080", "--accept-grace", "10s", "--timeout", "2s"];
    let mut first_args = vec!["--daemon-socket", socket_arg, "drain"];
    first_args.extend_from_slice(&grace);
    let first = spawn_drainctl(first_args);
    log.wait_for_line(10 * SECOND, |line| line.contains("for the accept grace"))
        .expect("the first drain is in its grace");
    let started = Instant::now();
    let second = drain_through_daemon(socket_arg, &grace);
    let took = started.elapsed();
    assert_eq!(second.code, Some(3), "{}", second.stderr_text());
    assert!(
        second
            .stderr_text()
            .contains("port 8080 is already being drained"),
        "{}",
        second.stderr_text()
    );
    assert!(took < 2 * SECOND, "refused after {took:?}");
    first.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(first.wait(10 * SECOND).code, Some(130));
}

/// The sockets get their modes from how they are made, whatever the umask (the unit
/// runs the daemon with `UMask=0077`): the root socket 0600, the pod socket 0666 in a
/// directory of 0755.
#[test]
fn the_sockets_have_their_modes_under_a_restrictive_umask() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let root_socket = daemon_socket_path("umask-root");
    let pod_socket = daemon_socket_path("umask-pods");
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", r#"umask 077; exec "$@""#, "sh"])
        .arg(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(&root_socket)
        .arg("--pod-socket")
        .arg(&pod_socket);
    let (_daemon, _log) = spawn_daemon_with(command, SERVING);
    let mode = |path: &std::path::Path| {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(&root_socket), 0o600);
    assert_eq!(mode(&pod_socket), 0o666);
    assert_eq!(mode(pod_socket.parent().unwrap()), 0o755);
    assert_eq!(mode(root_socket.parent().unwrap()), 0o700);
}

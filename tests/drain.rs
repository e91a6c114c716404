//! End-to-end drains of a real server process with real clients, each test in its own
//! network namespace, with the real eBPF program and the real `drainctl` binary.

use std::{
    os::unix::process::CommandExt as _,
    process::Command,
    time::{Duration, Instant},
};

use drain_tests::{
    assert_refused_at_once, bin_path, busy_client, drainctl_with_faults, idle_client, run_drainctl,
    spawn_drainctl, spawn_drainctl_with, start_server, wait_request_read, Closed, KeepAliveClient,
    Netns,
};
use nix::sys::signal::Signal;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn drain_refuses_new_closes_idle_and_lets_in_flight_finish() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let mut busy = busy_client(addr, &events, "/sleep/1500");

    // The in-flight answer would carry `Connection: close` by default; this test is about
    // the graceful close itself (the server reads EOF), which a blocking server reading
    // on a socket in the sk_msg map does not see (EAGAIN, see docs/in-band-close.md).
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--timeout",
        "20s",
        "--json",
        "-v",
        "--no-connection-close",
    ]);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);

    // Within the default spread (a third of the 20 s timeout).
    assert_eq!(
        idle.wait_closed(15 * SECOND),
        Closed::Eof,
        "idle client sees a FIN"
    );
    let response = busy.read_response().expect("in-flight request is answered");
    assert_eq!(
        (response.status, response.body_text()),
        (200, "slept 1500\n".to_string())
    );
    assert_eq!(
        busy.wait_closed(5 * SECOND),
        Closed::Eof,
        "then it is closed gracefully"
    );

    let output = drainctl.wait(20 * SECOND);
    assert_eq!(
        output.code,
        Some(0),
        "drainctl log:\n{}",
        output.stderr_text()
    );
    let report = output.json();
    assert_eq!(report["outcome"], "drained");
    assert_eq!(report["closed_gracefully"], 2);
    assert_eq!(report["closed_abortively"], 0);
    assert!(report["refused_connections"].as_u64().unwrap() >= 1);
    assert_eq!(report["remaining"].as_array().unwrap().len(), 0);
    assert!(
        output
            .stderr_text()
            .contains("refused a connection to draining port 8080"),
        "the eBPF program's log reaches drainctl's log:\n{}",
        output.stderr_text()
    );

    // The server saw EOF on both and closed them itself; it is still serving.
    let lines = events.all_lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("eof ")).count(),
        2,
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("error ")), "{lines:?}");
    // New connections stay refused after drainctl exited: the listener is still open.
    assert_refused_at_once(addr);
}

#[test]
fn drain_reports_an_unfinished_request_at_the_deadline_and_leaves_it_alone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/60000");

    let started = Instant::now();
    let output = run_drainctl(
        ["drain", "--port", "8080", "--timeout", "1s", "--json"],
        20 * SECOND,
    );
    assert_eq!(output.code, Some(1), "log:\n{}", output.stderr_text());
    assert!(started.elapsed() >= SECOND);
    let report = output.json();
    assert_eq!(report["outcome"], "deadline_reached");
    let remaining = report["remaining"].as_array().unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["peer"], busy.local_addr().to_string());
    assert_eq!(remaining[0]["state"], "ESTAB");
    assert!(remaining[0]["activity"]
        .as_str()
        .unwrap()
        .starts_with("in flight"));
    assert_eq!(report["closed_gracefully"], 0);

    assert_eq!(
        busy.wait_closed(Duration::from_millis(500)),
        Closed::StillOpen
    );
    assert!(!events.all_lines().iter().any(|l| l.starts_with("eof ")));
}

#[test]
fn human_report_lists_what_remains() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let busy = busy_client(addr, &events, "/sleep/60000");

    let output = run_drainctl(
        ["drain", "--port", "8080", "--timeout", "500ms"],
        20 * SECOND,
    );
    assert_eq!(output.code, Some(1));
    assert!(
        output.stdout.contains("deadline reached"),
        "{}",
        output.stdout
    );
    assert!(
        output.stdout.contains(&busy.local_addr().to_string()),
        "{}",
        output.stdout
    );
    assert!(
        output.stdout.contains("request read, not yet answered"),
        "{}",
        output.stdout
    );
    assert!(
        output.stdout.contains("drain-demo-serv"),
        "owner command shown: {}",
        output.stdout
    );
}

#[test]
fn steering_ends_when_the_drained_listener_closes() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (mut old, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = run_drainctl(["drain", "--port", "8080", "--json"], 20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["still_refusing"], true);
    assert_refused_at_once(addr);

    old.terminate(5 * SECOND).unwrap();
    let (_new, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut client = KeepAliveClient::connect(addr).expect("the new listener accepts");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

#[test]
fn steering_survives_a_killed_drainctl_but_not_the_listener() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (mut old, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");

    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "60s"]);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);
    drainctl.signal(Signal::SIGKILL);
    let output = drainctl.wait(5 * SECOND);
    assert_eq!(output.code, None, "killed by a signal");
    assert_refused_at_once(addr);

    old.terminate(5 * SECOND).unwrap();
    let (_new, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut client = KeepAliveClient::connect(addr).expect("the new listener accepts");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

#[test]
fn interrupting_a_drain_stops_the_refusal() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");

    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "60s"]);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);
    drainctl.signal(Signal::SIGINT);
    let output = drainctl.wait(10 * SECOND);
    assert_eq!(output.code, Some(130), "log:\n{}", output.stderr_text());
    assert!(output.stdout.contains("interrupted"), "{}", output.stdout);
    let mut client = KeepAliveClient::connect(addr).expect("accepted again after SIGINT");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

/// SIGTERM is the service manager stopping drainctl: the drain ends early but the
/// refusal stays until the listener closes, and the exit code says SIGTERM (143, as a
/// shell reports it), not SIGINT's 130.
#[test]
fn a_terminated_drain_keeps_refusing_and_exits_143() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");

    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "60s"]);
    drainctl.wait_until_refusing();
    drainctl.signal(Signal::SIGTERM);
    let output = drainctl.wait(10 * SECOND);
    assert_eq!(output.code, Some(143), "log:\n{}", output.stderr_text());
    assert!(output.stdout.contains("interrupted"), "{}", output.stdout);
    assert_refused_at_once(addr);
}

#[test]
fn release_undoes_a_finished_drain() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    assert_eq!(
        run_drainctl(["drain", "--port", "8080"], 20 * SECOND).code,
        Some(0)
    );
    assert_refused_at_once(addr);
    let output = run_drainctl(["release", "--port", "8080"], 10 * SECOND);
    assert_eq!(output.code, Some(0));
    assert!(
        output.stdout.contains("accepted again"),
        "{}",
        output.stdout
    );
    KeepAliveClient::connect(addr).expect("accepted after release");
}

#[test]
fn a_dual_stack_listener_is_refused_over_ipv4_and_ipv6() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, _) = start_server(["--listen", "[::]:8080", "--dual-stack"]);
    let _v4_client = KeepAliveClient::connect("127.0.0.1:8080").expect("IPv4 reaches [::]");
    let output = run_drainctl(
        ["drain", "--port", "8080", "--quiet-period", "0s"],
        20 * SECOND,
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_refused_at_once("127.0.0.1:8080".parse().unwrap());
    assert_refused_at_once("[::1]:8080".parse().unwrap());
}

#[test]
fn ipv4_and_ipv6_listeners_of_a_port_are_both_refused() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let (_server6, _events6, addr6) = start_server(["--listen", "[::1]:8080"]);
    let output = run_drainctl(["drain", "--port", "8080"], 20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_refused_at_once("127.0.0.1:8080".parse().unwrap());
    assert_refused_at_once(addr6);
}

#[test]
fn other_ports_are_untouched() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_drained, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let (_other, _events2, other) = start_server(["--listen", "127.0.0.1:9090"]);
    let mut other_client = idle_client(other);
    assert_eq!(
        run_drainctl(["drain", "--port", "8080"], 20 * SECOND).code,
        Some(0)
    );
    assert_eq!(other_client.request("GET", "/", b"").unwrap().status, 200);
    let mut new_client = KeepAliveClient::connect(other).expect("other port accepts");
    assert_eq!(new_client.request("GET", "/", b"").unwrap().status, 200);
}

#[test]
fn bad_ports_are_usage_errors() {
    for port in ["0", "65536", "eighty"] {
        let output = run_drainctl(["drain", "--port", port], 10 * SECOND);
        assert_eq!(
            output.code,
            Some(2),
            "port {port}: {}",
            output.stderr_text()
        );
    }
}

#[test]
fn no_listener_is_an_environment_error() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let output = run_drainctl(["drain", "--port", "8080"], 10 * SECOND);
    assert_eq!(output.code, Some(3));
    let message = output.stderr_text();
    assert!(
        message.contains("no TCP listener on port 8080"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "one-line error: {message}");
}

#[test]
fn unprivileged_user_is_told_to_run_as_root() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = spawn_drainctl_with(
        Command::new(bin_path("drainctl"))
            .args(["drain", "--port", "8080"])
            .uid(65534)
            .gid(65534),
    )
    .wait(10 * SECOND);
    assert_eq!(output.code, Some(3));
    assert!(
        output.stderr_text().contains("run drainctl as root"),
        "{}",
        output.stderr_text()
    );
}

#[test]
fn a_response_streamed_in_pieces_is_delivered_whole() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut streaming = KeepAliveClient::connect(addr).unwrap();
    // 20 chunks of 1 KiB, 100 ms apart: between chunks the socket looks answered.
    streaming.send_request("GET", "/stream/20", b"").unwrap();
    wait_request_read(&events, "/stream/");

    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "20s", "--json"]);
    let response = streaming.read_response().expect("the stream is answered");
    assert_eq!((response.status, response.body.len()), (200, 20 * 1024));
    assert_eq!(streaming.wait_closed(10 * SECOND), Closed::Eof);
    let output = drainctl.wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1);
}

#[test]
fn a_pipelined_request_is_served_not_cut() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    // Pipelined: the second request arrives before the first answer leaves, so from
    // TCP_INFO the connection looks answered (a known limit of the classification).
    // With no quiet period it is closed at once; closing only the server's read side
    // lets the server finish and deliver the answer before it reads EOF.
    let mut client = KeepAliveClient::connect(addr).unwrap();
    client.send_request("GET", "/", b"").unwrap();
    client
        .send_request("POST", "/sleep/1500", b"amount=10")
        .unwrap();
    wait_request_read(&events, "/sleep/");
    let output = run_drainctl(
        [
            "drain",
            "--port",
            "8080",
            "--timeout",
            "20s",
            "--quiet-period",
            "0s",
            "--json",
        ],
        30 * SECOND,
    );
    assert_eq!(client.read_response().unwrap().status, 200);
    let second = client
        .read_response()
        .expect("the POST is answered, not cut");
    assert_eq!(second.body_text(), "slept 1500 received 9\n");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
}

/// A server's own graceful stop (nginx's QUIT, Go's `Shutdown`) closes its listener first
/// and keeps serving the connections it has. The drain remembers the server it started
/// with: it is not done while that server still holds a connection, and once the last
/// request is answered it still closes the connection gracefully.
#[test]
fn a_server_that_closes_its_listener_first_is_drained_to_its_last_connection() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/2500");
    // As in the first test: about the server reading EOF, so without `Connection: close`.
    let mut drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--quiet-period",
        "200ms",
        "--timeout",
        "20s",
        "--json",
        "--no-connection-close",
    ]);
    drainctl.wait_until_refusing();
    server.signal(Signal::SIGUSR1).unwrap();
    events
        .wait_for("listeners closed", 5 * SECOND)
        .expect("the server closed its listener");
    std::thread::sleep(SECOND / 2);
    assert!(
        drainctl.is_running(),
        "drainctl ended while a request was in flight"
    );

    assert_eq!(busy.read_response().unwrap().status, 200);
    assert_eq!(busy.wait_closed(10 * SECOND), Closed::Eof);
    let output = drainctl.wait(10 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["closed_gracefully"], 1, "{report}");
    assert_eq!(report["closed_abortively"], 0, "{report}");
    let eof = format!("eof {}", busy.local_addr());
    assert!(
        events.all_lines().contains(&eof),
        "the server read EOF and closed the connection itself"
    );
}

/// A graceful stop can begin while drainctl sets up its steering (drainctl and the
/// server's own stop started together): by the time the program is attached, the server
/// has closed its listener. A closed listener gets no new connection, so there is nothing
/// to steer from it: the drain goes on and drains the connections the server still
/// holds, as it would have had the stop come later, instead of giving up (exit 3). The
/// setup is held at its start by a failpoint (`attach`, debug builds) while the server
/// closes its listener.
#[test]
fn a_listener_closed_during_setup_leaves_nothing_to_steer_and_the_drain_goes_on() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let mut busy = busy_client(addr, &events, "/sleep/2500");
    let drainctl = drainctl_with_faults(
        "attach:8080=stall-1500",
        &[
            "drain",
            "--port",
            "8080",
            "--quiet-period",
            "200ms",
            "--timeout",
            "20s",
            "--json",
            "--no-connection-close",
        ],
    );
    drainctl
        .log()
        .wait_for_line(10 * SECOND, |line| line.contains("failpoint fired"))
        .expect("the setup is held");
    server.signal(Signal::SIGUSR1).unwrap();
    events
        .wait_for("listeners closed", 5 * SECOND)
        .expect("the server closed its listener");

    assert_eq!(busy.read_response().unwrap().status, 200);
    assert_eq!(busy.wait_closed(10 * SECOND), Closed::Eof);
    assert_eq!(idle.wait_closed(10 * SECOND), Closed::Eof);
    let output = drainctl.wait(20 * SECOND);
    let log = output.stderr_text();
    assert_eq!(output.code, Some(0), "log:\n{log}");
    assert!(
        log.contains("the listener was closed before the steering was attached"),
        "log:\n{log}"
    );
    let report = output.json();
    assert_eq!(report["closed_gracefully"], 2, "{report}");
    assert_eq!(report["still_refusing"], false, "{report}");
}

/// A listener held by a process that outlives the server (systemd's socket activation, a
/// supervisor) does not close when the server exits, and a restart hands the same socket
/// to the next instance: a refusal keyed on it would refuse that instance forever. The
/// drain sees the keeper, refuses only while it runs, says so, and the next instance
/// gets its connections.
#[test]
fn a_listener_kept_by_a_supervisor_is_not_refused_after_the_server_is_gone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (supervisor, events) =
        drain_tests::spawn_demo_server(["--supervise", "--listen", "127.0.0.1:8080"]);
    // The n-th instance's pid, once it listens (its `listening` line and the
    // supervisor's `server <pid>` line come in either order).
    let instance = |n: usize| -> i32 {
        let started = Instant::now();
        loop {
            let lines = events.all_lines();
            let listening = lines.iter().filter(|l| l.starts_with("listening ")).count();
            let pids: Vec<i32> = lines
                .iter()
                .filter_map(|l| l.strip_prefix("server ")?.trim().parse().ok())
                .collect();
            if listening >= n && pids.len() >= n {
                return pids[n - 1];
            }
            assert!(started.elapsed() < 5 * SECOND, "instance {n} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let first = instance(1);
    let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let _idle = idle_client(addr);
    // Keeps the drain going while the refusal is checked.
    let _busy = busy_client(addr, &events, "/sleep/1500");

    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--pid",
        &first.to_string(),
        "--json",
    ]);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);
    let output = drainctl.wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["still_refusing"], false, "{report}");
    let kept_by = &report["listener_kept_by"];
    assert_eq!(kept_by[0]["pid"], supervisor.pid(), "{report}");
    assert!(
        output.stderr_text().contains("outlives the drained server"),
        "{}",
        output.stderr_text()
    );

    // The restart: the old instance stops, the supervisor starts the next one on the
    // same socket, and new clients reach it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGTERM).unwrap();
    events
        .wait_for("stopping ", 5 * SECOND)
        .expect("the first server stopped");
    supervisor.signal(Signal::SIGHUP).unwrap();
    let second = instance(2);
    assert_ne!(first, second);
    let mut client = KeepAliveClient::connect(addr).expect("the next instance accepts");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

/// `ip netns exec` runs drainctl in a mount namespace of its own, with a /sys of its own:
/// a bpffs mounted there, and the pinned refusal in it, would end with drainctl, while
/// the report said new connections stay refused. The report must tell what really
/// happens: either the refusal is pinned where it outlives drainctl (the host's bpffs,
/// where it can be reached) and a new connection is refused after drainctl exits, or it
/// is not, the report says so and drainctl warns.
#[test]
fn a_drain_under_ip_netns_exec_reports_truthfully_how_long_the_refusal_lasts() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, _events, addr) = start_server(["--listen", "127.0.0.1:8090"]);
    let name = format!("drain-test-{}-{}", std::process::id(), server.pid());
    let attach = Command::new("ip")
        .args(["netns", "attach", &name, &server.pid().to_string()])
        .status()
        .expect("ip netns attach");
    assert!(attach.success());
    let output = spawn_drainctl_with(
        Command::new("ip")
            .args(["netns", "exec", &name])
            .arg(bin_path("drainctl"))
            .args(["drain", "--port", "8090", "--timeout", "3s", "--json"]),
    )
    .wait(20 * SECOND);
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    if report["still_refusing"] == true {
        assert_refused_at_once(addr);
    } else {
        assert!(report["steering_pinned_at"].is_null(), "{report}");
        assert!(
            output.stderr_text().contains("mount namespace of its own"),
            "{}",
            output.stderr_text()
        );
        let mut client = KeepAliveClient::connect(addr).expect("accepted after drainctl exit");
        assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    }
}

/// A drain that cannot borrow the server's sockets (no CAP_SYS_PTRACE) could only reset
/// connections; it used to start anyway, check nothing but uid 0, and reset them. It
/// refuses up front and names what it lacks, and nothing is touched.
#[test]
fn a_drain_without_the_capabilities_it_needs_refuses_before_touching_anything() {
    let Some(setpriv) = drain_tests::systemd::require_tool("setpriv") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let output = spawn_drainctl_with(
        Command::new(setpriv)
            .args(["--bounding-set=-sys_ptrace", "--inh-caps=-all"])
            .arg(bin_path("drainctl"))
            .args([
                "drain",
                "--port",
                "8080",
                "--quiet-period",
                "0s",
                "--standalone",
            ]),
    )
    .wait(20 * SECOND);
    assert_eq!(output.code, Some(3), "{}", output.stderr_text());
    assert!(
        output.stderr_text().contains("lacks CAP_SYS_PTRACE"),
        "{}",
        output.stderr_text()
    );
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);
    assert_eq!(
        KeepAliveClient::connect(addr)
            .unwrap()
            .request("GET", "/", b"")
            .unwrap()
            .status,
        200
    );
}

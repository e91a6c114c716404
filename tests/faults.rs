//! Faults during a drain: the server or its successor dies, many ports drain at once,
//! the kernel's socket dumps fail or setup is slow (injected with `DRAIN_FAILPOINTS`,
//! see drain-daemon's `failpoint` module; debug builds only), the server's network
//! namespace is deleted, bpffs cannot be mounted. Each ends with an exit code that says
//! what happened, no connection of anyone else touched, and no refusal left behind for a
//! port whose listener is gone. (The daemon
//! dying midway is in `daemon.rs`, drainctl killed midway in `drain.rs`, two drains of
//! one port in `pin_safety.rs`.)

use std::{
    thread,
    time::{Duration, Instant},
};

use drain_tests::{
    assert_refused_at_once, bin_path, busy_client, connect_refused_quickly, drain_phase,
    drainctl_with_faults, idle_client, run_drainctl, spawn_drainctl, spawn_drainctl_with,
    start_server, systemd::require_tool, Closed, ConnectOutcome, KeepAliveClient, Netns,
    PrivateMounts,
};
use nix::sys::signal::Signal;

const SECOND: Duration = Duration::from_secs(1);

/// The server dies (SIGKILL) with a request in flight: its connections and its listener
/// go with it. The drain sees nothing of it left and ends at once (exit 0, not the
/// deadline), and the port is free for the next server.
#[test]
fn a_server_killed_mid_drain_ends_the_drain_and_frees_the_port() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/20000");
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "30s", "--json"]);
    drainctl.wait_until_refusing();
    let killed = Instant::now();
    server.signal(Signal::SIGKILL).unwrap();
    let output = drainctl.wait(10 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    assert!(killed.elapsed() < 5 * SECOND, "{:?}", killed.elapsed());
    assert_eq!(output.json()["still_refusing"], false, "{}", output.json());

    let (_next, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut client = KeepAliveClient::connect(addr).expect("the next server accepts");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

/// The successor dies during a handover: new connections must be refused at once (RST,
/// clients retry elsewhere), not handed to a dead listener nor left to time out, and the
/// old server's connections drain on.
#[test]
fn a_successor_killed_during_a_handover_leaves_new_connections_refused_at_once() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (old, events, addr) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    // Before the successor listens, so the old server has it.
    let mut busy = busy_client(addr, &events, "/sleep/2500");
    let (successor, _successor_events, _) =
        start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--pid",
        &old.pid().to_string(),
        "--json",
    ]);
    drainctl.wait_until_handing_over();
    let mut handed = KeepAliveClient::connect(addr).expect("the successor accepts");
    assert_eq!(handed.request("GET", "/", b"").unwrap().status, 200);

    successor.signal(Signal::SIGKILL).unwrap();
    thread::sleep(Duration::from_millis(200));
    assert_refused_at_once(addr);
    assert_eq!(busy.read_response().expect("answered").status, 200);
    let output = drainctl.wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
}

/// A host shutdown runs every service's `ExecStop=` at once: 20 ports drained together,
/// each drain ends on its own port's connections only, and each port is refused after.
#[test]
fn twenty_ports_drained_at_once_each_end_on_their_own() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let ports: Vec<u16> = (8100..8120).collect();
    let servers: Vec<_> = ports
        .iter()
        .map(|port| start_server(["--listen", &format!("127.0.0.1:{port}")]))
        .collect();
    let _clients: Vec<_> = servers
        .iter()
        .flat_map(|(_, _, addr)| [idle_client(*addr), idle_client(*addr)])
        .collect();
    let drains: Vec<_> = ports
        .iter()
        .map(|port| {
            let port = port.to_string();
            thread::spawn(move || {
                run_drainctl(
                    ["drain", "--port", &port, "--quiet-period", "0s", "--json"],
                    60 * SECOND,
                )
            })
        })
        .collect();
    for (drain, port) in drains.into_iter().zip(&ports) {
        let output = drain.join().unwrap();
        assert_eq!(
            output.code,
            Some(0),
            "port {port}: {}",
            output.stderr_text()
        );
        let report = output.json();
        assert_eq!(report["port"], *port);
        assert_eq!(report["closed_gracefully"], 2, "port {port}: {report}");
    }
    for (_, _, addr) in &servers {
        match connect_refused_quickly(*addr) {
            ConnectOutcome::Refused(_) => {}
            other => panic!("{addr}: expected refused, got {other:?}"),
        }
    }
}

/// A socket dump can fail once and work at the next pass: ENOBUFS under memory
/// pressure, a receive timeout on a loaded host, a malformed answer. The drain says so,
/// tries again at the next pass, and ends as it would have.
#[test]
fn a_scan_that_fails_once_is_retried_and_the_drain_goes_on() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    for (port, fault, said) in [
        ("8080", "enobufs", "ENOBUFS"),
        ("8081", "timeout", "EAGAIN"),
        ("8082", "malformed", "malformed sock_diag answer"),
    ] {
        let (_server, _events, addr) = start_server(["--listen", &format!("127.0.0.1:{port}")]);
        let mut idle = idle_client(addr);
        // The setup scans the port once: the first pass's scan fails.
        let output = drainctl_with_faults(
            &format!("scan:{port}={fault} from=2 times=1"),
            &["drain", "--port", port, "--quiet-period", "0s", "--json"],
        )
        .wait(30 * SECOND);
        let log = output.stderr_text();
        assert_eq!(output.code, Some(0), "{fault}: {log}");
        assert!(
            log.contains("trying again at the next pass") && log.contains(said),
            "{fault}: {log}"
        );
        assert_eq!(output.json()["closed_gracefully"], 1, "{fault}: {log}");
        assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof, "{fault}");
    }
}

/// Scans that keep failing stop the drain after 5 in a row: exit 4, a message that says
/// what is left (how many connections were closed, the pinned refusal and the command
/// that ends it), the drain's record marked `failed`, and the steering as the message
/// says: new connections refused until `drainctl release`.
#[test]
fn five_failed_scans_in_a_row_stop_the_drain_saying_what_is_left() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    let mut busy = busy_client(addr, &events, "/sleep/60000");
    // The setup's scan and the first pass's work: the pass closes the idle connection.
    let output = drainctl_with_faults(
        "scan:8080=enobufs from=3",
        &["drain", "--port", "8080", "--quiet-period", "0s"],
    )
    .wait(30 * SECOND);
    let log = output.stderr_text();
    assert_eq!(output.code, Some(4), "{log}");
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    assert!(
        log.contains("reading the sockets of port 8080 failed 5 times in a row"),
        "{log}"
    );
    assert!(log.contains("1 connection(s) were closed before"), "{log}");
    assert!(
        log.contains("new connections to port 8080 stay refused until its listener closes, at most --keep-refusing after the drain's timeout (pinned at /sys/fs/bpf/drain-daemon/")
            && log.contains("`drainctl release --port 8080` ends it now"),
        "{log}"
    );
    assert_eq!(drain_phase(8080).as_deref(), Some("failed"));
    assert_refused_at_once(addr);
    // The request in flight was left alone.
    assert_eq!(busy.wait_closed(SECOND), Closed::StillOpen);

    let release = run_drainctl(["release", "--port", "8080"], 10 * SECOND);
    assert_eq!(release.code, Some(0), "{}", release.stderr_text());
    let mut client = KeepAliveClient::connect(addr).expect("accepted after the release");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

/// `--timeout` bounds the whole run: a service manager kills at its own deadline, setup
/// included. With the steering's setup stalled for 8 s, a 10 s drain ends about 10 s
/// after it started, not 10 s after its setup.
#[test]
fn the_timeout_counts_a_slow_setup() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");
    let started = Instant::now();
    let output = drainctl_with_faults(
        "attach:8080=stall-8000",
        &["drain", "--port", "8080", "--timeout", "10s", "--json"],
    )
    .wait(40 * SECOND);
    let took = started.elapsed();
    assert_eq!(output.code, Some(1), "{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["outcome"], "deadline_reached", "{report}");
    assert!(
        took < 15 * SECOND,
        "a 10 s timeout with 8 s of setup took {took:?}: the setup was not counted"
    );
    assert!(report["elapsed_ms"].as_u64().unwrap() >= 10_000, "{report}");
}

/// Runs `command` (in the private mount namespace) to success.
fn run_ok(command: &mut std::process::Command) {
    let output = command.output().expect("spawn");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The server's network namespace is deleted mid-drain: its server is killed and its
/// name removed (`ip netns del`, as a container runtime tears a pod down). drainctl, in
/// the namespace, keeps it alive until it exits: the drain ends at once (its listener
/// is gone, exit 0), says nothing stays refused, and leaves no pin behind, where it
/// would otherwise wait for a later sweep (the namespace, and the pins' program with
/// it, is gone once drainctl exits).
#[test]
fn a_network_namespace_deleted_mid_drain_ends_the_drain_with_no_pin_left() {
    let Some(_outer) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let name = format!("drain-fault-{}", std::process::id());
    let (pins, output) = {
        let netns = Netns::new().expect("the server's network namespace");
        let (server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
        let _busy = busy_client(addr, &events, "/sleep/20000");
        let pid = server.pid().to_string();
        run_ok(mounts.command("ip").args(["netns", "attach", &name, &pid]));
        let drainctl = spawn_drainctl_with(&mut mounts.drainctl([
            "drain",
            "--standalone",
            "--port",
            "8080",
            "--timeout",
            "30s",
            "--json",
        ]));
        drainctl.wait_until_refusing();
        server.signal(Signal::SIGKILL).unwrap();
        run_ok(mounts.command("ip").args(["netns", "del", &name]));
        let output = drainctl.wait(10 * SECOND);
        let pins = format!("/sys/fs/bpf/drain-daemon/{}/port-8080", netns.dir_name());
        (mounts.path(&pins), output)
    };
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    assert!(!output.stderr_text().contains("panicked"));
    assert_eq!(output.json()["still_refusing"], false, "{}", output.json());
    assert!(!pins.exists(), "{} was left behind", pins.display());
}

/// bpffs is not mounted and cannot be (drainctl without CAP_SYS_ADMIN, as in a
/// container that was given only the capabilities a drain needs). The drain works, and
/// a holder process keeps the refusal after drainctl, until the listener closes: new
/// connections are refused during the drain and after it, nothing is mounted or pinned,
/// and the report names the holder.
#[test]
fn without_a_bpffs_it_may_mount_a_holder_keeps_the_refusal_until_the_listener_closes() {
    let Some(setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(false);
    let (mut server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/2000");
    let mut command = mounts.command(setpriv);
    command
        .args(["--bounding-set=-sys_admin", "--inh-caps=-all"])
        .arg(bin_path("drainctl"))
        .args([
            "drain",
            "--standalone",
            "--port",
            "8080",
            "--timeout",
            "15s",
            "--json",
        ]);
    let drainctl = spawn_drainctl_with(&mut command);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);
    assert_eq!(busy.read_response().expect("answered").status, 200);
    let output = drainctl.wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    assert!(
        output.stderr_text().contains(
            "bpffs is not available (mounting bpffs at /sys/fs/bpf (mount): Operation not permitted"
        ),
        "{}",
        output.stderr_text()
    );
    let report = output.json();
    assert_eq!(report["still_refusing"], true, "{report}");
    assert!(report["steering_pinned_at"].is_null(), "{report}");
    let holder = report["refusal_held_by"].as_u64().expect("held") as i32;
    assert_eq!(mounts.mount_options("/sys/fs/bpf"), None, "nothing mounted");
    assert_refused_at_once(addr);
    server.terminate(5 * SECOND).expect("the server stops");
    let holder_gone = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder), None).is_err()
    });
    assert!(holder_gone, "the holder {holder} outlived the listener");
}

//! Closing without loss: paced closes measured from the clients' side, requests racing
//! a close, `--force` at the deadline and `--accept-grace` before the refusal. Real
//! server process, real clients, real eBPF, each test in its own network namespace.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use drain_tests::{
    busy_client, connect_refused_quickly, drainctl_with_faults, idle_client,
    raise_open_files_limit, run_drainctl, spawn_drainctl, start_server, Closed, ConnectOutcome,
    KeepAliveClient, Netns,
};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn spread_closes_are_smooth_as_the_clients_see_them() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    raise_open_files_limit().unwrap();
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    const CLIENTS: usize = 1000;
    let clients: Vec<KeepAliveClient> = (0..CLIENTS).map(|_| idle_client(addr)).collect();

    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let watchers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let mut stream = client.stream().try_clone().unwrap();
                drop(client);
                stream.set_read_timeout(Some(20 * SECOND)).unwrap();
                start.wait();
                let mut byte = [0u8; 1];
                match stream.read(&mut byte) {
                    Ok(0) => Some(Instant::now()),
                    _ => None,
                }
            })
        })
        .collect();
    start.wait();
    let output = run_drainctl(
        [
            "drain",
            "--port",
            "8080",
            "--spread",
            "2s",
            "--quiet-period",
            "0s",
            "--timeout",
            "20s",
            "--json",
        ],
        30 * SECOND,
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], CLIENTS);

    let mut eofs: Vec<Instant> = watchers
        .into_iter()
        .filter_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(eofs.len(), CLIENTS, "every client read an orderly EOF");
    eofs.sort();
    let first = eofs[0];
    let span = *eofs.last().unwrap() - first;
    let mut slices = vec![0usize; span.as_millis() as usize / 100 + 1];
    for eof in &eofs {
        slices[(*eof - first).as_millis() as usize / 100] += 1;
    }
    let busiest = *slices.iter().max().unwrap();
    eprintln!("closes per 100 ms slice: {slices:?}");
    assert!(
        span >= Duration::from_millis(1600),
        "spread over the window, took {span:?}"
    );
    assert!(
        busiest * 100 <= CLIENTS * 10,
        "no 100 ms slice holds more than 10 % (even would be 5 %): {slices:?}"
    );
}

#[test]
fn batches_close_a_share_every_interval() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut clients: Vec<KeepAliveClient> = (0..8).map(|_| idle_client(addr)).collect();
    let started = Instant::now();
    let output = run_drainctl(
        [
            "drain",
            "--port",
            "8080",
            "--batch",
            "25",
            "--interval",
            "500ms",
            "--quiet-period",
            "0s",
            "--json",
        ],
        30 * SECOND,
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    // 4 batches of 2, 500 ms apart: at least 1.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let batches = output
        .stderr
        .iter()
        .filter(|line| line.contains("closed a batch of connections closed=2"))
        .count();
    assert_eq!(batches, 4, "log:\n{}", output.stderr_text());
    for client in &mut clients {
        assert_eq!(client.wait_closed(SECOND), Closed::Eof);
    }
}

/// Clients send requests at random moments while their connections are being closed.
/// Whatever the server read, it answered in full; a client whose request failed sent it
/// after the server had closed, so the server never saw it (a safe retry).
#[test]
fn a_request_racing_its_close_is_answered_or_never_read() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    const CLIENTS: usize = 60;
    let clients: Vec<KeepAliveClient> = (0..CLIENTS).map(|_| idle_client(addr)).collect();
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--spread",
        "1s",
        "--quiet-period",
        "0s",
        "--json",
    ]);
    let racers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(25 * i as u64));
                let peer = client.local_addr();
                let body = format!("order={i}");
                let outcome = client
                    .send_request("POST", "/", body.as_bytes())
                    .and_then(|()| client.read_response());
                (peer, outcome.map(|response| response.status).ok())
            })
        })
        .collect();
    let outcomes: Vec<(SocketAddr, Option<u16>)> =
        racers.into_iter().map(|r| r.join().unwrap()).collect();
    let output = drainctl.wait(30 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());

    let lines = events.all_lines();
    let read_by_server = |peer: &SocketAddr| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("request {peer} POST")))
            .count()
    };
    let mut answered = 0;
    for (peer, status) in &outcomes {
        match status {
            Some(200) => answered += 1,
            Some(other) => panic!("{peer} got {other}"),
            None => assert_eq!(
                read_by_server(peer),
                0,
                "{peer}: the server read a request it did not answer"
            ),
        }
    }
    eprintln!("{answered} of {CLIENTS} racing requests answered, the rest never read");
    assert!(
        answered > 0,
        "some requests won the race: the test exercised serving"
    );
}

#[test]
fn force_at_the_deadline_closes_what_remains_and_says_so() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/60000");
    let output = run_drainctl(
        [
            "drain",
            "--port",
            "8080",
            "--timeout",
            "1s",
            "--force",
            "--close-grace",
            "500ms",
            "--json",
        ],
        20 * SECOND,
    );
    assert_eq!(
        output.code,
        Some(1),
        "the deadline was reached:\n{}",
        output.stderr_text()
    );
    let report = output.json();
    assert_eq!(report["outcome"], "deadline_reached");
    assert_eq!(report["forced_gracefully"], 1);
    assert_eq!(report["remaining"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(
        busy.wait_closed(5 * SECOND),
        Closed::Eof,
        "forced with a FIN"
    );
    assert!(output
        .stderr_text()
        .contains("forced the remaining connections closed"));
}

#[test]
fn force_resets_connections_still_in_the_accept_queue() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    // A server that never accepts: the connection waits in the accept queue.
    let listener = TcpListener::bind("127.0.0.1:7070").unwrap();
    let mut queued = TcpStream::connect("127.0.0.1:7070").unwrap();
    let output = run_drainctl(
        [
            "drain",
            "--port",
            "7070",
            "--timeout",
            "500ms",
            "--force",
            "--close-grace",
            "200ms",
            "--json",
        ],
        20 * SECOND,
    );
    assert_eq!(output.code, Some(1), "{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["forced_abortively"], 1, "{report}");
    queued.set_read_timeout(Some(5 * SECOND)).unwrap();
    let err = queued.read(&mut [0u8; 1]).expect_err("reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    drop(listener);
}

#[test]
fn accept_grace_keeps_accepting_before_refusing() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = {
        let mut busy = idle_client(addr);
        busy.send_request("GET", "/sleep/60000", b"").unwrap();
        busy
    };
    let started = Instant::now();
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--accept-grace",
        "1500ms",
        "--timeout",
        "30s",
    ]);
    drainctl
        .log()
        .wait_for_line(5 * SECOND, |l| {
            l.contains("still accepting new connections")
        })
        .expect("grace announced");
    assert!(matches!(
        connect_refused_quickly(addr),
        ConnectOutcome::Connected
    ));
    let mut during = KeepAliveClient::connect(addr).unwrap();
    assert_eq!(during.request("GET", "/", b"").unwrap().status, 200);
    drainctl.wait_until_refusing();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(matches!(
        connect_refused_quickly(addr),
        ConnectOutcome::Refused(_)
    ));
}

/// Where ptrace is denied (Yama `ptrace_scope` 3, an LSM policy), drainctl cannot even
/// take a reference to the listener: it stops before refusing anything, exit 3, and says
/// what graceful draining needs. The denial is real at the system-call boundary: strace
/// makes the kernel's `pidfd_getfd` fail with EPERM for drainctl alone (ptrace policy is
/// host-wide, so it cannot be changed for one test).
#[test]
fn denied_ptrace_stops_the_drain_before_it_starts_and_says_what_it_needs() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let Some(strace) = drain_tests::systemd::require_tool("strace") else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut client = idle_client(addr);
    let output = drain_tests::spawn_drainctl_with(
        std::process::Command::new(strace)
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=pidfd_getfd"])
            .args(["-e", "inject=pidfd_getfd:error=EPERM"])
            .arg(drain_tests::bin_path("drainctl"))
            .args(["drain", "--port", "8080", "--quiet-period", "0s"]),
    )
    .wait(30 * SECOND);
    let log = output.stderr_text();
    assert_eq!(output.code, Some(3), "log:\n{log}");
    assert!(
        log.contains("cannot take a reference to the listener on port 8080")
            && log.contains("ptrace_scope")
            && log.contains("CAP_SYS_PTRACE"),
        "the error names the way out: {log}"
    );
    assert_eq!(client.wait_closed(SECOND), Closed::StillOpen);
    assert_eq!(
        connect_refused_quickly(addr),
        ConnectOutcome::Connected,
        "nothing refused"
    );
}

/// Where ptrace is denied for some servers only (an LSM policy for one process), each
/// of their connections is reset instead of closed gracefully, and drainctl says so
/// once, at warning level, with what graceful closes need. `pidfd_getfd` of the
/// connections fails with EPERM through a failpoint (`borrow`, debug builds only): the
/// listener of the same process must stay borrowable, which no host-wide setting gives.
#[test]
fn ptrace_denied_for_connections_resets_them_and_says_so_once() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut clients: Vec<KeepAliveClient> = (0..3).map(|_| idle_client(addr)).collect();
    let output = drainctl_with_faults(
        "borrow:8080=eperm",
        &["drain", "--port", "8080", "--quiet-period", "0s", "--json"],
    )
    .wait(30 * SECOND);
    let log = output.stderr_text();
    assert_eq!(output.code, Some(0), "log:\n{log}");
    let report = output.json();
    assert_eq!(report["closed_abortively"], 3, "log:\n{log}");
    assert_eq!(report["closed_gracefully"], 0, "log:\n{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("cannot borrow"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, log:\n{log}");
    assert!(
        warnings[0].contains("ptrace_scope") && warnings[0].contains("CAP_SYS_PTRACE"),
        "the warning names the way out: {}",
        warnings[0]
    );
    for client in &mut clients {
        assert_eq!(client.wait_closed(5 * SECOND), Closed::Reset);
    }
}

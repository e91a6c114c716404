//! Draining a server that is in use, with the default options: under continuous
//! keep-alive load no connection is ever idle for the quiet period, so the drain must
//! close busy connections between a response and their client's next request, and lose
//! nothing doing it. Real server processes, a real load generator (hey, Go's net/http
//! keep-alive pool), real eBPF, a private network namespace per test; the load always
//! outlasts the drain, so no connection ends on its own.

use std::{
    thread,
    time::{Duration, Instant},
};

use drain_tests::{
    hey, nginx, run_drainctl, spawn_drainctl, start_server, systemd::require_tool, Closed,
    EventReader, HeyRun, KeepAliveClient, Netns,
};

const SECOND: Duration = Duration::from_secs(1);

/// An old server and its successor on the same port (SO_REUSEPORT), `hey_args` of load
/// against `path` for `load_seconds`, then, 2 s in, `drainctl drain --port 8080 --pid
/// OLD --json` plus `drain_args`. Returns the drain's report, exit code and run time,
/// what hey saw and the old server's events.
struct Handover {
    report: serde_json::Value,
    code: Option<i32>,
    drain_took: Duration,
    load: HeyRun,
    old_events: EventReader,
    drain_log: String,
}

fn handover(path: &str, hey_args: &[&str], load_seconds: u64, drain_args: &[&str]) -> Handover {
    let (old, old_events, addr) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let (_new, _new_events, _) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let url = format!("http://{addr}{path}");
    let mut args: Vec<String> = vec!["-z".into(), format!("{load_seconds}s")];
    args.extend(hey_args.iter().map(|a| a.to_string()));
    args.push(url);
    let load = thread::spawn(move || hey(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    thread::sleep(2 * SECOND);
    let pid = old.pid().to_string();
    let mut drain = vec!["drain", "--port", "8080", "--pid", &pid, "--json"];
    drain.extend(drain_args);
    let started = Instant::now();
    let output = run_drainctl(drain, 60 * SECOND);
    let drain_took = started.elapsed();
    let load = load.join().unwrap();
    Handover {
        report: output.json(),
        code: output.code,
        drain_took,
        load,
        old_events,
        drain_log: output.stderr_text(),
    }
}

/// Every request the old server read, it answered: nothing was cut mid-request.
fn assert_answered_all_it_read(events: &EventReader) {
    let lines = events.all_lines();
    let read = lines.iter().filter(|l| l.starts_with("request ")).count();
    let answered = lines.iter().filter(|l| l.starts_with("response ")).count();
    assert!(read > 0, "the old server served before the drain");
    assert_eq!(
        read, answered,
        "the old server answered every request it read"
    );
}

/// The case of the issue this was built for: keep-alive clients that send a request,
/// get the answer after ~100 ms and wait for their next 200 ms tick (hey `-q 5`), so
/// every connection is busy half the time and none is ever quiet for 1 s. With the
/// defaults the next response of each carries `Connection: close` and the client leaves
/// after reading it; with `--no-connection-close` (the strategy left for TLS and other
/// protocols) the drain learns each client's pause and closes each connection right
/// after a response. Either way it finishes long before its deadline and no request
/// fails.
fn paced_load_is_drained(method: &str, drain_args: &[&str]) {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let run = handover(
        "/sleep/100",
        &["-c", "50", "-q", "5", "-m", method, "-d", "order=42"],
        14,
        drain_args,
    );
    assert_drained_under_load(&run);
    let closed_at_boundary = run.report["closed_at_boundary"].as_u64().unwrap();
    let asked_to_close = run.report["connection_close_sent"].as_u64().unwrap();
    if drain_args.contains(&"--no-connection-close") {
        assert_eq!(asked_to_close, 0, "{}", run.report);
        assert!(closed_at_boundary > 0, "{}", run.report);
    } else {
        assert!(asked_to_close > 0, "{}", run.report);
    }
}

/// The drain ended with everything drained (exit 0, none reset, none left) while the
/// load still ran (it runs 14 s), no client request failed and the old server answered
/// every request it read.
fn assert_drained_under_load(run: &Handover) {
    assert_eq!(run.code, Some(0), "drain log:\n{}", run.drain_log);
    assert!(
        run.drain_took < 10 * SECOND,
        "drained while the load still ran, in {:?}",
        run.drain_took
    );
    assert!(
        run.load.errors.is_empty(),
        "hey saw errors:\n{}",
        run.load.summary
    );
    assert!(run.load.ok > 0, "{}", run.load.summary);
    assert_eq!(run.report["closed_abortively"], 0, "{}", run.report);
    assert!(run.report["remaining"].as_array().unwrap().is_empty());
    assert_answered_all_it_read(&run.old_events);
}

#[test]
fn paced_keep_alive_get_load_is_drained_with_the_defaults_losing_nothing() {
    paced_load_is_drained("GET", &[]);
}

#[test]
fn paced_keep_alive_post_load_is_drained_with_the_defaults_losing_nothing() {
    paced_load_is_drained("POST", &[]);
}

#[test]
fn paced_keep_alive_post_load_is_closed_between_requests_without_connection_close() {
    paced_load_is_drained("POST", &["--no-connection-close"]);
}

/// Heartbeats (a websocket's ping every 0.5 s, an SSE keep-alive): each exchange is
/// answered in microseconds, so the drain never catches a request being served and
/// learns the rhythm from the request interval instead. Without `Connection: close`
/// (a websocket, or `--no-connection-close`) every connection is closed between two
/// exchanges and none is lost.
#[test]
fn heartbeat_connections_are_closed_between_two_exchanges() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let run = handover(
        "/",
        &["-c", "40", "-q", "2"],
        12,
        &["--no-connection-close"],
    );
    assert_eq!(run.code, Some(0), "drain log:\n{}", run.drain_log);
    assert!(run.drain_took < 8 * SECOND, "{:?}", run.drain_took);
    assert!(
        run.load.errors.is_empty(),
        "hey saw errors:\n{}",
        run.load.summary
    );
    assert!(
        run.report["closed_at_boundary"].as_u64().unwrap() > 0,
        "{}",
        run.report
    );
    assert_answered_all_it_read(&run.old_events);
}

/// A client that sends its next request the instant it reads an answer has no pause to
/// close in; its server's next response carries `Connection: close` instead (the drain's
/// sk_msg program writes it), so the client closes after reading it and sends the next
/// request on a new connection, to the successor. With the defaults the drain finishes
/// well before its deadline and no request fails.
#[test]
fn back_to_back_clients_are_asked_to_close_and_lose_nothing() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let run = handover("/sleep/20", &["-c", "10"], 14, &[]);
    assert_drained_under_load(&run);
    let asked = run.report["connection_close_sent"].as_u64().unwrap();
    assert!(asked > 0, "{}", run.report);
}

/// A keep-alive client whose short answers taught the drain its rhythm, then fetches a
/// streamed response: between two pieces the stream looks answered, and a close there
/// cuts it where the server watches its client while answering. nginx does (measured:
/// a read side shut down mid-stream ends its proxied response after 4 of 20 KiB). With
/// the batch schedule below the drain may close this connection only from about 4 s on,
/// in the middle of a 4 s stream that its passes have seen going on: the stream must
/// arrive whole, and the connection be closed after it, between two short requests.
#[test]
fn a_streamed_response_after_a_learned_rhythm_is_delivered_whole() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let Some(nginx) = require_tool("nginx") else {
        return;
    };
    let (_backend, _backend_events, backend) = start_server(["--listen", "127.0.0.1:9000"]);
    let proxy = start_nginx(&nginx, backend.port());
    // Idle for the quiet period when the drain starts: the first batch (one connection)
    // is spent on it, and the next comes 4 s later.
    let mut idle = connect_when_listening("127.0.0.1:8080");
    thread::sleep(Duration::from_millis(1200));
    let mut client = connect_when_listening("127.0.0.1:8080");
    let drain = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--json",
        "--batch",
        "50",
        "--interval",
        "4s",
    ]);
    let started = Instant::now();
    // Short answers 100 ms apart, then the stream (40 pieces 100 ms apart), then short
    // answers until the drain closes the connection.
    let short_until_closed = |client: &mut KeepAliveClient, until: Instant| -> bool {
        while Instant::now() < until {
            if client.wait_closed(Duration::from_millis(100)) == Closed::Eof {
                return true;
            }
            let answer = client
                .request("GET", "/sleep/100", b"")
                .expect("a short answer");
            assert_eq!(answer.status, 200, "{answer:?}");
        }
        false
    };
    assert!(
        !short_until_closed(&mut client, started + 2 * SECOND),
        "the drain's first batch was the idle connection"
    );
    // The same pause before the stream: a request sent at once would teach the drain
    // that this client sends back to back, and it would never close the connection.
    assert_eq!(
        client.wait_closed(Duration::from_millis(100)),
        Closed::StillOpen
    );
    let stream = client.request("GET", "/stream/40", b"");
    let closed_after = short_until_closed(&mut client, started + 15 * SECOND);
    let output = drain.wait(30 * SECOND);
    let stream = stream.unwrap_or_else(|e| panic!("the stream was cut: {e}"));
    assert_eq!(stream.status, 200);
    assert_eq!(stream.body.len(), 40 * 1024, "the stream arrived whole");
    assert!(stream
        .body
        .chunks(1024)
        .enumerate()
        .all(|(i, piece)| piece.iter().all(|&b| b == b'a' + (i % 26) as u8)));
    assert!(
        closed_after,
        "closed between two short requests after the stream"
    );
    assert_eq!(idle.wait_closed(SECOND), Closed::Eof);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    drop(proxy);
}

/// nginx on 127.0.0.1:8080 proxying to the demo server on `backend`, as the busy
/// benchmark runs it.
fn start_nginx(nginx: &std::path::Path, backend: u16) -> nginx::Nginx {
    nginx::spawn_proxy(nginx, "busy", 8080, backend)
}

fn connect_when_listening(addr: &str) -> KeepAliveClient {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        match KeepAliveClient::connect(addr) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("nothing listens on {addr}: {e}"),
        }
    }
}

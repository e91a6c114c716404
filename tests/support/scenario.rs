//! The steps end-to-end tests share: a demo server that is listening, clients in a
//! known state (idle after one answered request, or with a request the server has read
//! and not answered), and the check that a new connection is refused at once. One
//! definition keeps the tests' setups identical and their bodies about what they test.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    connect_refused_quickly, spawn_demo_server_via, ChildGuard, ConnectOutcome, EventReader,
    KeepAliveClient,
};

const SECOND: Duration = Duration::from_secs(1);

/// Starts `drain-demo-server ARGS...` and waits until it listens; returns the server,
/// its events and its (first) address. Panics if it does not start (test contract).
pub fn start_server<I, S>(args: I) -> (ChildGuard, EventReader, SocketAddr)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    start_server_via(&[], args)
}

/// [`start_server`] through a wrapper command ([`spawn_demo_server_via`]).
pub fn start_server_via<I, S>(wrapper: &[&str], args: I) -> (ChildGuard, EventReader, SocketAddr)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (server, events) = spawn_demo_server_via(wrapper, args);
    let addr = events
        .wait_listening(5 * SECOND)
        .expect("demo server is listening");
    (server, events, addr)
}

/// How many connections the demo server behind `events` has logged accepting so far.
pub fn accepted(events: &EventReader) -> usize {
    events
        .all_lines()
        .iter()
        .filter(|l| l.starts_with("accepted "))
        .count()
}

/// The accepted counts of the demo servers behind `events` once they add up to at least
/// `total`, or after 5 s. A server logs accepting a connection before it answers on it,
/// but the line reaches the test's reader thread a moment later: a count taken right
/// after the clients got their answers can be short under load.
pub fn accepted_at_least(events: &[&EventReader], total: usize) -> Vec<usize> {
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        let counts: Vec<usize> = events.iter().map(|e| accepted(e)).collect();
        if counts.iter().sum::<usize>() >= total || Instant::now() >= deadline {
            return counts;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A keep-alive client that made one request, had it answered, and now sits idle.
pub fn idle_client(addr: SocketAddr) -> KeepAliveClient {
    let mut client = KeepAliveClient::connect(addr).expect("connect");
    let response = client.request("GET", "/", b"").expect("first request");
    assert_eq!(response.status, 200);
    client
}

/// Waits until the server has read a request for `path_prefix` (it is now in flight).
pub fn wait_request_read(events: &EventReader, path_prefix: &str) {
    events
        .wait_for_line(5 * SECOND, |line| {
            line.starts_with("request ") && line.contains(path_prefix)
        })
        .unwrap_or_else(|| panic!("the server never read a request for {path_prefix}"));
}

/// A keep-alive client whose request for `path` (e.g. `/sleep/60000`) the server has
/// read and not yet answered.
pub fn busy_client(addr: SocketAddr, events: &EventReader, path: &str) -> KeepAliveClient {
    let mut client = idle_client(addr);
    client
        .send_request("GET", path, b"")
        .expect("send the slow request");
    wait_request_read(events, path);
    client
}

/// Asserts that a new connection to `addr` is refused (RST), and at once.
pub fn assert_refused_at_once(addr: SocketAddr) {
    match connect_refused_quickly(addr) {
        ConnectOutcome::Refused(elapsed) => assert!(
            elapsed < Duration::from_millis(500),
            "refusal took {elapsed:?}"
        ),
        other => panic!("expected a refused connection to {addr}, got {other:?}"),
    }
}

/// Waits until `ss` lists at least `count` TCP listeners on `port`, for `within` at most.
pub fn wait_listeners(port: u16, count: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let listing = std::process::Command::new("ss")
            .args(["-Hltn", &format!("( sport = :{port} )")])
            .output()?;
        anyhow::ensure!(
            listing.status.success(),
            "ss -Hltn failed: {}",
            listing.status
        );
        let seen = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count();
        if seen >= count {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{seen} listeners on :{port} after {within:?}, expected {count}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that a new client of `addr` is accepted and served (`why` says when).
pub fn assert_served(addr: SocketAddr, why: &str) {
    let mut client =
        KeepAliveClient::connect(addr).unwrap_or_else(|err| panic!("{why}: not accepted: {err}"));
    assert_eq!(
        client.request("GET", "/", b"").unwrap().status,
        200,
        "{why}"
    );
}

/// Asserts that a drain left `addr` alone: `idle` (an [`idle_client`]) is still open
/// and served, and a new client is accepted and served.
pub fn assert_untouched(idle: &mut KeepAliveClient, addr: SocketAddr) {
    assert_eq!(
        idle.request("GET", "/", b"")
            .expect("the idle connection is still open")
            .status,
        200
    );
    assert_eq!(
        idle_client(addr).request("GET", "/", b"").unwrap().status,
        200
    );
}

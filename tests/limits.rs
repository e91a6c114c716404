//! How many listeners one drain can hold: the steering maps have a fixed size
//! (`drain_common::MAX_LISTENERS_PER_PORT`), so a port with more listeners than that (a
//! large SO_REUSEPORT group: one listener per worker, per address family) must either
//! work or fail with a message naming the limit, never steer part of them silently.

use std::{net::SocketAddr, time::Duration};

use drain_tests::{
    connect_refused_quickly, idle_client, run_drainctl,
    scenario::{accepted, accepted_at_least},
    spawn_drainctl, start_server, Closed, ConnectOutcome, DrainctlOutput, KeepAliveClient, Netns,
};

const SECOND: Duration = Duration::from_secs(1);

/// The limit as docs/steering.md and the error messages state it.
const LIMIT: usize = 128;

/// A demo server with `count` SO_REUSEPORT listeners on 127.0.0.1:8080.
fn reuseport_group(count: usize) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    for _ in 0..count {
        args.extend(["--listen".into(), "127.0.0.1:8080".into()]);
    }
    args.push("--reuseport".into());
    args
}

/// A group larger than the old limit of 64 drains; a second drain of the port, which
/// takes over the first one's pinned steering (its 100 listeners still in the map),
/// drains too: replacing the set needs no room for old and new side by side.
#[test]
fn a_reuseport_group_of_100_drains_twice_in_a_row() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(reuseport_group(100));
    let mut idle = idle_client(addr);
    let drain = || {
        run_drainctl(
            ["drain", "--port", "8080", "--timeout", "20s", "--json"],
            30 * SECOND,
        )
    };
    let first = drain();
    assert_eq!(first.code, Some(0), "{}", first.stderr_text());
    assert_eq!(first.json()["closed_gracefully"], 1);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    assert!(matches!(
        connect_refused_quickly(addr),
        ConnectOutcome::Refused(_)
    ));

    let second = drain();
    assert_second_drain_refuses(
        &second,
        "reusing the pinned steering of an earlier drain",
        addr,
    );
}

/// A second drain of the port that took over, or replaced, the first one's pinned
/// steering (its log says `how`) drained, and new connections are still refused.
fn assert_second_drain_refuses(second: &DrainctlOutput, how: &str, addr: SocketAddr) {
    assert_eq!(second.code, Some(0), "{}", second.stderr_text());
    assert!(
        second.stderr_text().contains(how),
        "the second drain's log does not say {how:?}: {}",
        second.stderr_text()
    );
    assert_eq!(second.json()["still_refusing"], true);
    for _ in 0..20 {
        assert!(matches!(
            connect_refused_quickly(addr),
            ConnectOutcome::Refused(_)
        ));
    }
}

/// One listener more than a drain can hold: exit 3 with a message naming the limit,
/// and nothing refused (no part of the group is steered).
#[test]
fn more_listeners_than_the_limit_fail_naming_it() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, addr) = start_server(reuseport_group(LIMIT + 1));
    let output = run_drainctl(["drain", "--port", "8080", "--timeout", "5s"], 30 * SECOND);
    assert_eq!(output.code, Some(3), "{}", output.stderr_text());
    let message = output.stderr_text();
    assert!(
        message.contains(&format!("{} listeners", LIMIT + 1))
            && message.contains(&format!("at most {LIMIT}")),
        "the error does not say how many and what the limit is: {message}"
    );
    let mut client = KeepAliveClient::connect(addr).expect("nothing is refused");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
}

/// A successor group larger than the limit still takes every new connection (through
/// the first LIMIT of its listeners, said in a warning) instead of their being refused.
#[test]
fn a_successor_group_beyond_the_limit_still_takes_new_connections() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (old, old_events, addr) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let mut idle = idle_client(addr);
    let (_new, new_events, _) = start_server(reuseport_group(LIMIT + 2));
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--pid",
        &old.pid().to_string(),
        "--timeout",
        "20s",
        "--json",
    ]);
    drainctl.wait_until_handing_over();
    let old_accepted = accepted(&old_events);
    for _ in 0..20 {
        let mut client = KeepAliveClient::connect(addr).expect("a new connection is accepted");
        assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    }
    assert_eq!(idle.wait_closed(10 * SECOND), Closed::Eof);
    let output = drainctl.wait(30 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["refused_connections"], 0, "{report}");
    assert!(
        report["steered_connections"].as_u64().unwrap() >= 20,
        "{report}"
    );
    assert_eq!(report["successors"], LIMIT, "{report}");
    assert!(
        output
            .stderr_text()
            .contains(&format!("{} successor listeners", LIMIT + 2)),
        "no warning names the successors left out: {}",
        output.stderr_text()
    );
    assert_eq!(accepted(&old_events), old_accepted);
    assert!(accepted_at_least(&[&new_events], 20)[0] >= 20);
}

/// The steering program is sized for the drain that loads it (its load cost grows with
/// its slots): one listener gets 32 slots. A second drain of the port that finds that
/// pinned steering too small for its 41 listeners replaces it with one sized for them,
/// and every listener stays refused.
#[test]
fn a_pinned_steering_too_small_for_the_next_drain_is_replaced_by_a_larger_one() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (old, _old_events, addr) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let (_group, _group_events, _) = start_server(reuseport_group(40));
    let first = run_drainctl(
        [
            "drain",
            "--port",
            "8080",
            "--pid",
            &old.pid().to_string(),
            "--timeout",
            "10s",
            "--json",
        ],
        30 * SECOND,
    );
    assert_eq!(first.code, Some(0), "{}", first.stderr_text());
    assert_eq!(first.json()["successors"], 40);

    let second = run_drainctl(
        ["drain", "--port", "8080", "--timeout", "10s", "--json"],
        30 * SECOND,
    );
    assert_second_drain_refuses(&second, "has no room for this drain's listeners", addr);
}

/// The successors' room is set when the drain starts (16 at least, more for a larger
/// group already listening): a group started during the drain with more listeners
/// than that takes the new connections through 16 of them, said in a warning.
#[test]
fn a_successor_group_started_during_the_drain_gets_the_room_set_at_the_start() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_old, old_events, addr) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let _busy = drain_tests::busy_client(addr, &old_events, "/sleep/3000");
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "20s", "--json"]);
    drainctl.wait_until_refusing();
    let (_new, _new_events, _) = start_server(reuseport_group(20));
    drainctl.wait_until_handing_over();
    for _ in 0..20 {
        let mut client = KeepAliveClient::connect(addr).expect("a new connection is accepted");
        assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    }
    let output = drainctl.wait(30 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["successors"], 16, "{report}");
    assert_eq!(report["refused_connections"], 0, "{report}");
    assert!(
        output
            .stderr_text()
            .contains("20 successor listeners, more than the 16 the steering holds"),
        "{}",
        output.stderr_text()
    );
}

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    close::When,
    drain::{tests::plan, DrainPlan},
    inventory::{classify::classify, rhythm, Connection, PortInventory},
};

const QUIET: Duration = Duration::from_secs(1);
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection (`cookie`) whose latest request arrived `recv_ms` ago and latest
/// response left `sent_ms` ago, after `requests` requests and `responses` responses.
fn connection(
    cookie: u64,
    recv_ms: u32,
    sent_ms: u32,
    requests: u32,
    responses: u32,
) -> Connection {
    let mut socket = rhythm::tests::socket(recv_ms, sent_ms, requests, responses);
    socket.id.cookie = cookie;
    socket.id.remote.set_port(40000 + cookie as u16);
    Connection {
        activity: classify(&socket, QUIET),
        socket,
        owner: None,
    }
}

/// Quiet for longer than the quiet period.
fn idle(cookie: u64) -> Connection {
    connection(cookie, 5000, 5000, 3, 3)
}

fn port(connections: Vec<Connection>) -> PortInventory {
    PortInventory {
        port: 8080,
        connections,
        ..PortInventory::default()
    }
}

/// The rhythms of a drain that saw the busy connection `cookie` served twice, each
/// request 100 ms after the previous response: a client that pauses 100 ms.
fn paced_client(cookie: u64) -> Rhythms {
    let mut rhythms = Rhythms::default();
    let t0 = Instant::now();
    rhythms.observe(&port(vec![connection(cookie, 30, 130, 2, 1)]), t0);
    rhythms.observe(
        &port(vec![connection(cookie, 10, 110, 3, 2)]),
        t0 + Duration::from_millis(200),
    );
    rhythms
}

/// Answered 5 ms ago: early in its client's 100 ms pause.
fn at_a_boundary(cookie: u64) -> Connection {
    connection(cookie, 105, 5, 3, 3)
}

/// A request being served.
fn being_served(cookie: u64) -> Connection {
    connection(cookie, 10, 110, 4, 3)
}

fn ago(duration: Duration) -> Instant {
    Instant::now().checked_sub(duration).unwrap()
}

/// What the policies chose, as (cookie, "fin" | "boundary" | "idle"), in order.
fn chosen(steps: Vec<Step<'_>>) -> Vec<(u64, &'static str)> {
    steps
        .into_iter()
        .map(|step| match step {
            Step::Fin(c) => (c.socket.id.cookie, "fin"),
            Step::Close((c, When::AtBoundary { .. })) => (c.socket.id.cookie, "boundary"),
            Step::Close((c, When::Idle)) => (c.socket.id.cookie, "idle"),
        })
        .collect()
}

fn policies() -> Policies {
    Policies::standard(&DrainPlan {
        close_grace: CLOSE_GRACE,
        // No kernel program in a unit test: the in-band close is off.
        no_connection_close: true,
        ..plan()
    })
}

#[test]
fn a_pass_sends_the_fins_due_then_closes_busy_connections_at_a_boundary_then_idle_ones() {
    let snapshot = port(vec![idle(1), idle(2), at_a_boundary(3), being_served(4)]);
    let rhythms = paced_client(3);
    let seen = Seen {
        snapshot: &snapshot,
        rhythms: &rhythms,
    };
    let asked = HashMap::from([(1, ago(CLOSE_GRACE * 2))]);
    let steps = policies().choose(seen, &asked);
    assert_eq!(chosen(steps), [(1, "fin"), (3, "boundary"), (2, "idle")]);
}

#[test]
fn a_fin_is_sent_once_the_close_grace_has_passed_and_only_once() {
    let snapshot = port(vec![idle(1)]);
    let rhythms = Rhythms::default();
    let seen = Seen {
        snapshot: &snapshot,
        rhythms: &rhythms,
    };
    let mut fin = FinAfterGrace::new(CLOSE_GRACE);
    let just_asked = HashMap::from([(1, Instant::now())]);
    assert!(chosen(fin.choose(seen, &just_asked)).is_empty());
    let asked_long_ago = HashMap::from([(1, ago(CLOSE_GRACE * 2))]);
    assert_eq!(chosen(fin.choose(seen, &asked_long_ago)), [(1, "fin")]);
    assert!(chosen(fin.choose(seen, &asked_long_ago)).is_empty());
}

#[test]
fn the_idle_policy_leaves_busy_connections_and_those_asked_before() {
    let snapshot = port(vec![idle(1), idle(2), being_served(3)]);
    let rhythms = Rhythms::default();
    let seen = Seen {
        snapshot: &snapshot,
        rhythms: &rhythms,
    };
    let asked = HashMap::from([(1, Instant::now())]);
    assert_eq!(chosen(Idle.choose(seen, &asked)), [(2, "idle")]);
}

#[test]
fn the_boundary_policy_takes_only_busy_connections_early_in_a_known_pause() {
    let snapshot = port(vec![at_a_boundary(1), being_served(2), idle(3)]);
    let rhythms = paced_client(1);
    let seen = Seen {
        snapshot: &snapshot,
        rhythms: &rhythms,
    };
    assert_eq!(
        chosen(AtBoundary.choose(seen, &HashMap::new())),
        [(1, "boundary")]
    );
    let asked = HashMap::from([(1, Instant::now())]);
    assert!(chosen(AtBoundary.choose(seen, &asked)).is_empty());
}

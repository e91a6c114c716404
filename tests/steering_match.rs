//! Which new connections the steering takes: only those the kernel's own lookup would
//! have given a draining listener. A listener's address family, its `IPV6_V6ONLY` and
//! the device it is bound to (`SO_BINDTODEVICE`) decide that as much as its address, and
//! a connection the drained listener would never have got belongs to another listener
//! of the port: refusing it, or handing it to a successor, takes it from its owner.

use std::{net::SocketAddr, time::Duration};

use drain_tests::{
    assert_refused_at_once, busy_client, drainctl_in_pid_namespace_of, spawn_drainctl,
    spawn_drainctl_with, start_server, start_server_via, ChildGuard, EventReader, KeepAliveClient,
    Netns,
};

const SECOND: Duration = Duration::from_secs(1);

/// Whether `events` (a demo server's) show it accepted a connection from `peer`.
fn accepted_from(events: &EventReader, peer: SocketAddr) -> bool {
    events
        .wait_for_line(2 * SECOND, |line| line == format!("accepted {peer}"))
        .is_some()
}

/// Drains the server `old` (by its pid), which holds `busy` in flight, while one other
/// server, `successor`, listens on the port: a new connection to `refused` must be
/// refused at once, one to `taken` must reach the successor without the program
/// (steered none), and the drain must end once `busy` is answered.
fn handover_refuses_one_and_steers_none(
    old: &ChildGuard,
    mut busy: KeepAliveClient,
    successor: &EventReader,
    refused: SocketAddr,
    taken: SocketAddr,
) {
    let drainctl = spawn_drainctl([
        "drain",
        "--port",
        "8080",
        "--pid",
        &old.pid().to_string(),
        "--json",
    ]);
    drainctl.wait_until_handing_over();
    assert_refused_at_once(refused);
    let mut client = KeepAliveClient::connect(taken).expect("the successor accepts");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    assert!(accepted_from(successor, client.local_addr()));

    assert_eq!(busy.read_response().expect("answered").status, 200);
    let output = drainctl.wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["steered_connections"], 0, "{report}");
    assert_eq!(report["refused_connections"], 1, "{report}");
}

/// A server on `[::]:P` that is IPv6-only takes no IPv4 connection: those go to a
/// listener on `0.0.0.0:P` (the two may share the port). Draining the IPv6 one must
/// leave them to it, also when the drain does not know that listener as a successor
/// (here its process is outside the PID namespace the drain sees, as a sidecar's).
#[test]
fn draining_an_ipv6_only_listener_leaves_ipv4_connections_to_the_ipv4_listener() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    // The demo server's IPv6 listeners are IPv6-only unless --dual-stack.
    let (drained, _events, _) = start_server_via(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        ["--listen", "[::]:8080"],
    );
    let (_ipv4, ipv4_events, _) = start_server(["--listen", "0.0.0.0:8080"]);
    let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let v6: SocketAddr = "[::1]:8080".parse().unwrap();

    let output = spawn_drainctl_with(&mut drainctl_in_pid_namespace_of(
        &drained,
        [
            "drain",
            "--standalone",
            "--port",
            "8080",
            "--pid",
            "1",
            "--timeout",
            "10s",
            "--json",
        ],
    ))
    .wait(20 * SECOND);
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["still_refusing"], true, "{}", output.json());

    assert_refused_at_once(v6);
    let mut client = KeepAliveClient::connect(v4).expect("IPv4 is not the drain's to refuse");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    assert!(accepted_from(&ipv4_events, client.local_addr()));
}

/// The reverse: the drained listener takes IPv4 and the only successor is IPv6-only on
/// `[::]:P`. An IPv4 connection must not be handed to it (the kernel would never give it
/// one): it is refused, while IPv6 connections go to the successor.
#[test]
fn an_ipv6_only_successor_gets_no_ipv4_connection() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (old, old_events, v4) = start_server(["--listen", "127.0.0.1:8080"]);
    let (_successor, successor_events, _) = start_server(["--listen", "[::]:8080"]);
    let v6: SocketAddr = "[::1]:8080".parse().unwrap();
    let busy = busy_client(v4, &old_events, "/sleep/3000");
    handover_refuses_one_and_steers_none(&old, busy, &successor_events, v4, v6);
}

/// Two servers on `0.0.0.0:P`, each bound to its own device. Draining the one on `d0`
/// hands the other its new connections, so a SYN arriving on `d0` has no successor that
/// could take it (the one on `d1` never sees `d0`'s traffic) and is refused; one
/// arriving on `d1` was never the drained listener's and reaches the `d1` server as
/// before, without being counted as steered.
#[test]
fn a_listener_bound_to_a_device_is_matched_only_for_connections_arriving_on_it() {
    let Some(netns) = Netns::require() else {
        return;
    };
    for (device, address) in [("d0", "10.0.0.1/24"), ("d1", "10.1.0.1/24")] {
        let peer = format!("{device}p");
        netns
            .run_ip(&["link", "add", device, "type", "veth", "peer", "name", &peer])
            .unwrap();
        netns
            .run_ip(&["addr", "add", address, "dev", device])
            .unwrap();
        for link in [device, peer.as_str()] {
            netns.run_ip(&["link", "set", link, "up"]).unwrap();
        }
    }
    let on_d0: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let on_d1: SocketAddr = "10.1.0.1:8080".parse().unwrap();
    let (old, old_events, _) = start_server(["--listen", "0.0.0.0:8080", "--bind-device", "d0"]);
    let (_other, other_events, _) =
        start_server(["--listen", "0.0.0.0:8080", "--bind-device", "d1"]);
    let busy = busy_client(on_d0, &old_events, "/sleep/3000");
    handover_refuses_one_and_steers_none(&old, busy, &other_events, on_d0, on_d1);
}

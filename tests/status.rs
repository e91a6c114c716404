//! `drainctl status` against the truth: the same sockets counted by `ss`, real owners,
//! real accept queues, and drains seen while they run and after they end.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use drain_tests::{
    busy_client, idle_client, run_drainctl, spawn_drainctl, start_server, KeepAliveClient, Netns,
};
use nix::sys::signal::Signal;
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

fn drainctl_status(args: &[&str]) -> Value {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let output = run_drainctl(all, 20 * SECOND);
    assert_eq!(
        output.code,
        Some(0),
        "status failed:\n{}",
        output.stderr_text()
    );
    output.json()
}

fn port(status: &Value, port: u16) -> &Value {
    status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("port {port} missing from {status}"))
}

/// Lines of `ss -Htn state STATE '( sport = :PORT )'`.
fn ss_lines(state: &str, port: u16) -> Vec<String> {
    let output = Command::new("ss")
        .args(["-Htn", "state", state, &format!("( sport = :{port} )")])
        .output()
        .expect("run ss");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn idle_clients(addr: SocketAddr, count: usize) -> Vec<KeepAliveClient> {
    (0..count).map(|_| idle_client(addr)).collect()
}

#[test]
fn status_counts_what_ss_counts_and_tells_idle_from_in_flight() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let (_other, _other_events, other) = start_server(["--listen", "127.0.0.1:9090"]);
    let _idle = idle_clients(addr, 30);
    let _elsewhere = idle_clients(other, 5);
    let mut busy: Vec<KeepAliveClient> = (0..2)
        .map(|_| KeepAliveClient::connect(addr).unwrap())
        .collect();
    for client in &mut busy {
        client.send_request("GET", "/sleep/30000", b"").unwrap();
    }
    for _ in 0..2 {
        events
            .wait_for_line(5 * SECOND, |l| {
                l.starts_with("request ") && l.contains("/sleep/")
            })
            .expect("slow request read");
    }

    let status = drainctl_status(&["--port", "8080", "--quiet-period", "0s"]);
    assert_eq!(status["source"], "sock_diag");
    let p = port(&status, 8080);
    let established = ss_lines("established", 8080).len();
    assert_eq!(
        established, 32,
        "ss sees the 30 idle and 2 busy connections"
    );
    assert_eq!(p["connections"]["total"], established);
    assert_eq!(p["connections"]["idle"], 30);
    assert_eq!(p["connections"]["in_flight"], 2);
    let listeners = p["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["address"], "127.0.0.1:8080");
    assert!(listeners[0]["cookie"].as_u64().is_some());
    assert_eq!(listeners[0]["owners"][0]["pid"], server.pid());
    assert_eq!(listeners[0]["owners"][0]["command"], "drain-demo-serv");
    assert_eq!(p["refusing_new_connections"], false);
    assert!(p["drain"].is_null());
}

#[test]
fn accept_queue_and_limit_match_ss() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:7070").unwrap();
    let _waiting: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect("127.0.0.1:7070").unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let status = drainctl_status(&["--port", "7070"]);
    let l = &port(&status, 7070)["listeners"][0];
    let ss = ss_lines("listening", 7070);
    let columns: Vec<&str> = ss[0].split_whitespace().collect();
    assert_eq!(l["accept_queue"], 3);
    assert_eq!(l["accept_queue"].to_string(), columns[0], "Recv-Q: {ss:?}");
    assert_eq!(
        l["accept_queue_limit"].to_string(),
        columns[1],
        "Send-Q: {ss:?}"
    );
    assert_eq!(l["owners"][0]["pid"], std::process::id());
    // Unaccepted connections belong to no process yet: the queue counts them.
    assert_eq!(port(&status, 7070)["connections"]["total"], 0);
    drop(listener);
}

#[test]
fn every_listening_port_is_listed_ipv4_and_ipv6() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_a, _ea, _) = start_server(["--listen", "127.0.0.1:8080"]);
    let (_b, _eb, dual) = start_server(["--listen", "[::]:9090", "--dual-stack"]);
    // A v4 client of a dual-stack listener: a v4-mapped socket on the IPv6 listener.
    let _mapped = idle_clients(
        SocketAddr::new("127.0.0.1".parse().unwrap(), dual.port()),
        2,
    );
    let status = drainctl_status(&[]);
    let ports: Vec<u64> = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![8080, 9090]);
    assert_eq!(port(&status, 9090)["listeners"][0]["address"], "[::]:9090");
    assert_eq!(
        port(&status, 9090)["connections"]["total"],
        ss_lines("established", 9090).len()
    );
    assert_eq!(port(&status, 9090)["connections"]["total"], 2);
}

#[test]
fn address_filter_keeps_one_local_address() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_one, _e1, one) = start_server(["--listen", "127.0.0.1:8080", "--reuseport"]);
    let (_two, _e2, two) = start_server(["--listen", "127.0.0.2:8080", "--reuseport"]);
    let _c1 = idle_clients(one, 1);
    let _c2 = idle_clients(two, 3);
    let status = drainctl_status(&["--port", "8080", "--address", "127.0.0.2"]);
    let p = port(&status, 8080);
    assert_eq!(p["listeners"].as_array().unwrap().len(), 1);
    assert_eq!(p["listeners"][0]["address"], "127.0.0.2:8080");
    assert_eq!(p["connections"]["total"], 3);
}

#[test]
fn procfs_source_sees_the_same_sockets_but_judges_none_idle() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _idle = idle_clients(addr, 4);
    let status = drainctl_status(&[
        "--port",
        "8080",
        "--inventory-source",
        "procfs",
        "--quiet-period",
        "0s",
    ]);
    assert_eq!(status["source"], "procfs");
    let p = port(&status, 8080);
    assert_eq!(p["connections"]["total"], 4);
    assert_eq!(p["connections"]["idle"], 0);
    assert!(p["listeners"][0]["cookie"].is_null());
    assert_eq!(p["listeners"][0]["owners"][0]["pid"], server.pid());
    let human = run_drainctl(["status", "--inventory-source", "procfs"], 10 * SECOND);
    assert!(human.stdout.contains("/proc/net/tcp"), "{}", human.stdout);
}

#[test]
fn a_running_drain_and_its_end_are_shown() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");
    let drainctl = spawn_drainctl(["drain", "--port", "8080", "--timeout", "60s"]);
    drainctl
        .log()
        .wait_for_line(10 * SECOND, |l| l.contains("draining port 8080"))
        .expect("drain under way");

    let during = drainctl_status(&["--port", "8080"]);
    let p = port(&during, 8080);
    assert_eq!(p["refusing_new_connections"], true);
    assert_eq!(p["drain"]["running"], true);
    assert_eq!(p["drain"]["phase"], "draining");
    assert_eq!(p["drain"]["pid"], drainctl.pid());
    assert_eq!(p["drain"]["timeout_ms"], 60_000);
    let human = run_drainctl(["status", "--port", "8080"], 10 * SECOND);
    assert!(human.stdout.contains("draining"), "{}", human.stdout);

    drainctl.signal(Signal::SIGKILL);
    drainctl.wait(5 * SECOND);
    let after = drainctl_status(&["--port", "8080"]);
    let p = port(&after, 8080);
    assert_eq!(
        p["drain"]["running"], false,
        "a killed drain is not shown as running"
    );
    assert_eq!(
        p["refusing_new_connections"], true,
        "the refusal outlives drainctl"
    );
    assert_eq!(p["connections"]["in_flight"], 1);
}

#[test]
fn a_finished_drain_is_shown_by_name_not_by_rust_debug_name() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let _busy = busy_client(addr, &events, "/sleep/60000");
    let drain = run_drainctl(
        ["drain", "--port", "8080", "--timeout", "500ms"],
        20 * SECOND,
    );
    assert_eq!(drain.code, Some(1), "{}", drain.stderr_text());
    let human = run_drainctl(["status", "--port", "8080"], 10 * SECOND);
    assert!(
        human.stdout.contains("deadline reached after") && !human.stdout.contains("Deadline"),
        "{}",
        human.stdout
    );
    let json = drainctl_status(&["--port", "8080"]);
    assert_eq!(port(&json, 8080)["drain"]["phase"], "deadline_reached");
}

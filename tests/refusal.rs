//! How long a drain's refusal of new connections lasts: from the drain's start until the
//! drained listener closes, wherever drainctl runs (pinned in the host's bpffs, or kept
//! by a holder process under `ip netns exec`, where no bpffs outlives drainctl), and at
//! the latest `--keep-refusing` after the drain, also when drainctl is killed midway and
//! the server keeps running.

use std::{
    fs,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use drain_tests::{
    assert_refused_at_once, assert_served, bin_path, busy_client, connect_refused_quickly, haproxy,
    hey, nginx, spawn_drainctl_with, start_server, wait_listeners, ChildGuard, ConnectOutcome,
    Drainctl, NamedNetns, Netns,
};
use nix::sys::signal::Signal;

const SECOND: Duration = Duration::from_secs(1);

/// The argument a holder process is started with (drain-daemon's `steer::holder`).
const HOLDER_ARGUMENT: &str = "--hold-drain-refusal";

/// The network namespace of process `pid` under a name, for `ip netns exec`.
fn name_netns(pid: u32) -> NamedNetns {
    NamedNetns::of(pid).expect("ip netns attach")
}

/// drainctl with `args`, run by `ip netns exec` in `named`: alone in a mount namespace of
/// its own, where no bpffs outlives it.
fn drainctl_under(named: &NamedNetns, args: &[&str]) -> Drainctl {
    spawn_drainctl_with(named.exec(bin_path("drainctl")).args(args))
}

/// The holder processes in this test's network namespace.
fn holders() -> Vec<u32> {
    let netns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let Some(ours) = netns("thread-self") else {
        return Vec::new();
    };
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|name| {
            fs::read(format!("/proc/{name}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == HOLDER_ARGUMENT.as_bytes())
            })
        })
        .filter(|name| netns(name) == Some(ours.clone()))
        .filter_map(|name| name.parse().ok())
        .collect()
}

/// Waits up to `within` for the holders in this test's network namespace to be gone.
fn holders_gone_within(within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if holders().is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    holders().is_empty()
}

/// How long after `since` a new connection to `addr` was first accepted, trying every
/// 100 ms for `within` at most.
fn first_accepted(addr: SocketAddr, since: Instant, within: Duration) -> Option<Duration> {
    while since.elapsed() < within {
        match connect_refused_quickly(addr) {
            ConnectOutcome::Refused(_) => std::thread::sleep(Duration::from_millis(100)),
            _ => return Some(since.elapsed()),
        }
    }
    None
}

const TIMEOUT: &str = "3s";
const KEEP_REFUSING: &str = "2s";
/// When the refusal of a killed drain ends at the latest: its timeout, then
/// `--keep-refusing`, from its start.
const ENDS_AFTER: Duration = Duration::from_secs(5);

/// drainctl is killed midway while a request keeps the drain running, and the server goes
/// on: new connections stay refused until the drain's timeout plus `--keep-refusing`,
/// then the server gets them again.
fn a_killed_drains_refusal_ends_by_itself(under_ip_netns_exec: bool) {
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8090"]);
    let _busy = busy_client(addr, &events, "/sleep/30000");
    let named = under_ip_netns_exec.then(|| name_netns(server.pid()));
    let started = Instant::now();
    let args = [
        "drain",
        "--port",
        "8090",
        "--timeout",
        TIMEOUT,
        "--keep-refusing",
        KEEP_REFUSING,
        "--standalone",
    ];
    let drainctl = match &named {
        Some(named) => drainctl_under(named, &args),
        None => spawn_drainctl_with(Command::new(bin_path("drainctl")).args(args)),
    };
    drainctl.wait_until_refusing();
    drainctl.signal(Signal::SIGKILL);
    let output = drainctl.wait(5 * SECOND);
    assert_eq!(output.code, None, "killed: {}", output.stderr_text());
    assert_refused_at_once(addr);
    let accepted = first_accepted(addr, started, ENDS_AFTER + 6 * SECOND)
        .expect("new connections are accepted again once the refusal's time is up");
    assert!(
        accepted >= ENDS_AFTER,
        "new connections were accepted {accepted:?} after the drain started, before its \
         timeout and --keep-refusing ({ENDS_AFTER:?})"
    );
    assert_served(addr, "accepted");
    assert!(
        holders_gone_within(3 * SECOND),
        "a holder outlived the refusal: {:?}",
        holders()
    );
}

#[test]
fn a_killed_drains_pinned_refusal_ends_by_itself_while_the_server_runs_on() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    a_killed_drains_refusal_ends_by_itself(false);
}

#[test]
fn a_killed_drains_held_refusal_ends_by_itself_while_the_server_runs_on() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    a_killed_drains_refusal_ends_by_itself(true);
}

/// Under `ip netns exec` with the defaults: the refusal outlives drainctl, held by a
/// holder process, until the server's stop closes the listener; the holder exits with
/// it, and a new server on the port gets its connections.
#[test]
fn under_ip_netns_exec_the_refusal_outlives_drainctl_until_the_server_stops() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (mut server, _events, addr) = start_server(["--listen", "127.0.0.1:8090"]);
    let named = name_netns(server.pid());
    let output = drainctl_under(&named, &["drain", "--port", "8090", "--json"]).wait(40 * SECOND);
    assert_eq!(output.code, Some(0), "{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["still_refusing"], true, "{report}");
    assert_eq!(report["refusal_ends_within_ms"], 90_000, "{report}");
    let holder = report["refusal_held_by"]
        .as_u64()
        .unwrap_or_else(|| panic!("a holder keeps the refusal: {report}"));
    assert_eq!(holders(), vec![holder as u32]);
    for _ in 0..3 {
        assert_refused_at_once(addr);
        std::thread::sleep(Duration::from_millis(300));
    }
    server.terminate(5 * SECOND).expect("the server stops");
    assert!(
        holders_gone_within(3 * SECOND),
        "the holder {holder} outlived the listener"
    );
    let (_next, _events, addr) = start_server(["--listen", "127.0.0.1:8090"]);
    assert_served(addr, "the next server accepts");
}

/// SIGINT is a person aborting the drain: the refusal ends at once, held or not.
#[test]
fn an_interrupted_drain_under_ip_netns_exec_stops_refusing_at_once() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (server, events, addr) = start_server(["--listen", "127.0.0.1:8090"]);
    let _busy = busy_client(addr, &events, "/sleep/30000");
    let named = name_netns(server.pid());
    let drainctl = drainctl_under(&named, &["drain", "--port", "8090", "--timeout", "20s"]);
    drainctl.wait_until_refusing();
    assert_refused_at_once(addr);
    assert_eq!(holders().len(), 1, "a holder keeps it");
    drainctl.signal(Signal::SIGINT);
    let output = drainctl.wait(10 * SECOND);
    assert_eq!(output.code, Some(130), "{}", output.stderr_text());
    assert_served(addr, "accepted after the abort");
    assert!(holders_gone_within(3 * SECOND));
}

/// A restart behind `ip netns exec`: the new nginx shares the port (reuseport), the old
/// one is drained with `--pid`, then stopped with TERM (nginx's fast stop, which cuts
/// what it holds) a second after drainctl exits, a gap a stop script or a service
/// manager may leave. Clients that open a connection per request keep arriving. Once
/// drainctl has exited, the holder keeps new connections going to the successor, so the
/// reuseport group never hands one to the old nginx before its stop: no request is lost.
/// Were the refusal to end with drainctl, the old nginx would take about half of the new
/// connections in that second, and its stop would cut those still in flight.
#[test]
fn an_nginx_handover_under_ip_netns_exec_then_its_fast_stop_loses_no_request() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let Some(nginx_path) = drain_tests::systemd::require_tool("nginx") else {
        return;
    };
    let (_backend, _backend_events, backend) = start_server(["--listen", "127.0.0.1:9000"]);
    let old = nginx::spawn_proxy(&nginx_path, "old", 8080, backend.port());
    wait_listeners(8080, 1, 5 * SECOND).expect("listening");
    let _new = nginx::spawn_proxy(&nginx_path, "new", 8080, backend.port());
    wait_listeners(8080, 2, 5 * SECOND).expect("listening");
    let named = name_netns(old.0.pid());
    let load = std::thread::spawn(|| {
        hey(&[
            "-z",
            "10s",
            "-c",
            "50",
            "-q",
            "10",
            "-disable-keepalive",
            "http://127.0.0.1:8080/sleep/300",
        ])
    });
    std::thread::sleep(2 * SECOND);
    let old_pid = old.0.pid().to_string();
    let args = [
        "drain",
        "--port",
        "8080",
        "--pid",
        &old_pid,
        "--timeout",
        "4s",
        "--json",
    ];
    drain_then_stop_loses_nothing(&named, &args, load, || {
        old.0.signal(Signal::SIGTERM).expect("TERM the old nginx");
    });
}

/// Runs drainctl with `args` under `ip netns exec` (a held refusal must outlive it),
/// then `stop`s the old server a second later; `load` must lose nothing.
fn drain_then_stop_loses_nothing(
    named: &NamedNetns,
    args: &[&str],
    load: std::thread::JoinHandle<drain_tests::HeyRun>,
    stop: impl FnOnce(),
) {
    let output = drainctl_under(named, args).wait(30 * SECOND);
    let report = output.json();
    assert!(
        matches!(output.code, Some(0 | 1)),
        "{}",
        output.stderr_text()
    );
    assert_eq!(report["still_refusing"], true, "{report}");
    assert!(report["refusal_held_by"].is_u64(), "{report}");
    std::thread::sleep(SECOND);
    stop();
    let load = load.join().expect("hey");
    assert!(load.ok > 1000, "{}", load.summary);
    assert!(
        load.errors.is_empty() && load.failed() == 0,
        "requests lost:\n{}",
        load.summary
    );
}

/// Behind haproxy (two backends, `retries 3`, `option redispatch`), with clients that
/// send POSTs back to back: one backend is drained under `ip netns exec` and killed a
/// second after drainctl exits. The drain asks each of haproxy's connections to close
/// in its next response, and while the refusal lasts haproxy's new connections to that
/// backend are refused and redispatched to the other one: no POST is lost. Were the
/// refusal to end with drainctl, haproxy would connect to the old backend again (its
/// health checks have not marked it down yet) and the kill would cut POSTs in flight.
#[test]
fn behind_haproxy_a_drain_under_ip_netns_exec_then_a_kill_loses_no_post() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let Some(_) = drain_tests::systemd::require_tool("haproxy") else {
        return;
    };
    let (old, _old_events, _) = start_server(["--listen", "127.0.0.1:9001"]);
    let (_other, _other_events, _) = start_server(["--listen", "127.0.0.1:9002"]);
    let dir = std::env::temp_dir().join(format!(
        "drain-refusal-haproxy-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let config = haproxy::config(&dir, 8080, [9001, 9002]).expect("haproxy's configuration");
    let _haproxy = ChildGuard(
        haproxy::command(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    wait_listeners(8080, 1, 5 * SECOND).expect("listening");
    let named = name_netns(old.pid());
    let load = std::thread::spawn(|| {
        hey(&[
            "-z",
            "10s",
            "-c",
            "50",
            "-m",
            "POST",
            "-d",
            "order=42",
            "http://127.0.0.1:8080/sleep/100",
        ])
    });
    std::thread::sleep(3 * SECOND);
    let args = ["drain", "--port", "9001", "--timeout", "5s", "--json"];
    drain_then_stop_loses_nothing(&named, &args, load, || {
        old.signal(Signal::SIGKILL).expect("kill the old backend");
    });
}

//! The shipped systemd units (`systemd/`): systemd accepts them, the daemon's is hardened
//! to the exposure docs/daemon.md states, the example service is ordered and timed so its
//! ExecStop drain is never cut, and the daemon run with exactly the unit's capabilities
//! drains a server of another user gracefully, calling only system calls the unit's
//! filter allows. The capabilities and the filter are read from the unit file, so a
//! capability or a system call taken from the unit fails here, not on a user's machine.

use std::{
    collections::BTreeSet, net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path,
    process::Command, time::Duration,
};

use drain_tests::{
    bin_path, daemon_socket_path, drain_through_daemon, idle_client, spawn_daemon_with,
    spawn_demo_server_as,
    systemd::{require_tool, setpriv_args, units_dir, Unit},
    ChildGuard, Closed, Netns, SERVING,
};

const SECOND: Duration = Duration::from_secs(1);
const UNITS: &[&str] = &[
    "drain-daemon.service",
    "drain-daemon.socket",
    "example-web.service",
];
/// What issue 8 asks of the daemon unit (`systemd-analyze security`, 0 to 10).
const MAX_EXPOSURE: f64 = 3.0;
/// `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = require_tool("systemd-analyze") else {
        return;
    };
    // A scratch root holding the units and the executables they name: ours are the
    // built binaries, the example's server a stand-in. verify checks that each Exec
    // path exists in the root; the package test checks the .deb puts ours there.
    let root = std::env::temp_dir().join(format!("drain-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let unit_dir = root.join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir).unwrap();
    let mut installed = Vec::new();
    for name in UNITS {
        let unit = Unit::shipped(name);
        for exe in unit.executables() {
            place_executable(&root, &exe);
        }
        let path = unit_dir.join(name);
        std::fs::copy(&unit.path, &path).unwrap();
        installed.push(path);
    }
    // --man=no: the man pages exist only in the package; --recursive-errors=no: the
    // root has none of the units the shipped ones are ordered after.
    let output = Command::new(analyze)
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(format!("--root={}", root.display()))
        .args(&installed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    // Warnings (an unknown key, a bad value ignored) do not change the exit code.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let _ = std::fs::remove_dir_all(&root);
}

fn place_executable(root: &Path, exe: &Path) {
    assert!(
        exe.is_absolute(),
        "Exec path {} is not absolute",
        exe.display()
    );
    let target = root.join(exe.strip_prefix("/").unwrap());
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    if matches!(name, "drain-daemon" | "drainctl") {
        std::fs::copy(bin_path(name), &target).unwrap();
    } else {
        std::fs::write(&target, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn daemon_unit_exposure_is_at_most_three() {
    let Some(analyze) = require_tool("systemd-analyze") else {
        return;
    };
    let unit = units_dir().join("drain-daemon.service");
    let output = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "→ Overall exposure level for drain-daemon.service: 2.3 OK 🙂"
    let exposure: f64 = stdout
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for drain-daemon.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security output: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn example_unit_drains_its_own_process_before_the_daemon_stops() {
    let unit = Unit::shipped("example-web.service");
    let after = unit.values("After").join(" ");
    assert!(
        after
            .split_whitespace()
            .any(|u| u == "drain-daemon.service"),
        "After={after}: without it the daemon may stop while the ExecStop drain runs"
    );
    assert!(
        unit.value("DynamicUser") == Some("yes")
            || unit
                .value("User")
                .is_some_and(|user| user != "root" && user != "0"),
        "the example service should run as a non-root user"
    );
    let stops = unit.values("ExecStop");
    let [drain] = stops.as_slice() else {
        panic!("expected one ExecStop=, got {stops:?}");
    };
    let (prefix, command) = drain.split_at(drain.find('/').unwrap());
    assert!(
        prefix.contains('+'),
        "ExecStop={drain}: drainctl must run as root ('+'), not as the service's user"
    );
    assert!(
        prefix.contains('-'),
        "ExecStop={drain}: exit 1 must not fail the stop"
    );
    let args: Vec<&str> = command.split_whitespace().collect();
    assert!(
        args.windows(2).any(|w| w == ["--pid", "$MAINPID"]),
        "ExecStop={drain}: the drain must be scoped to the service (--pid $MAINPID)"
    );
    let option = |name: &str, default: &str| -> Duration {
        let value = args
            .windows(2)
            .find(|w| w[0] == name)
            .map_or(default, |w| w[1]);
        seconds(value)
    };
    // drainctl's defaults for what the line leaves out.
    let longest_drain =
        option("--accept-grace", "0s") + option("--timeout", "30s") + option("--close-grace", "2s");
    let stop_timeout = seconds(unit.value("TimeoutStopSec").expect("TimeoutStopSec="));
    assert!(
        stop_timeout > longest_drain,
        "TimeoutStopSec={stop_timeout:?} must exceed the drain's {longest_drain:?} \
         (accept grace + timeout + close grace), or systemd kills the drain"
    );
}

/// `45s` or `45` (the only spellings the shipped units use).
fn seconds(value: &str) -> Duration {
    let number = value.strip_suffix('s').unwrap_or(value);
    Duration::from_secs(
        number
            .parse()
            .unwrap_or_else(|_| panic!("unexpected duration {value:?} in a unit")),
    )
}

#[test]
fn daemon_with_the_units_capabilities_drains_a_server_of_another_user() {
    let Some(setpriv) = require_tool("setpriv") else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let unit = Unit::shipped("drain-daemon.service");
    let caps = setpriv_args(&unit);
    let (server, events) = spawn_demo_server_as(NOBODY, NOBODY, ["--listen", "127.0.0.1:8080"]);
    let addr = events.wait_listening(5 * SECOND).expect("server listening");

    // What the daemon sees of the listener's owners, under the unit's capabilities and
    // with CAP_DAC_READ_SEARCH taken away: the reason the unit grants it.
    let owners = |caps: &[String]| -> serde_json::Value {
        let output = Command::new(&setpriv)
            .args(caps)
            .arg(bin_path("drainctl"))
            .args(["status", "--port", "8080", "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        status["ports"][0]["listeners"][0]["owners"].clone()
    };
    assert_eq!(
        owners(&caps)[0]["pid"],
        server.pid(),
        "the unit's capabilities find the owner"
    );
    let without_dac: Vec<String> = caps
        .iter()
        .map(|arg| arg.replace(",+dac_read_search", ""))
        .collect();
    assert_ne!(without_dac, caps, "the unit grants CAP_DAC_READ_SEARCH");
    assert_eq!(owners(&without_dac), serde_json::json!([]));

    let mut command = Command::new(&setpriv);
    command.args(&caps).arg(bin_path("drain-daemon"));
    drain_through(command, addr, "unit-caps");
}

/// Starts the daemon with `command` (a wrapper followed by the drain-daemon binary; the
/// socket option is added here), drains the server at `addr` through it with drainctl,
/// and checks that an idle connection and one in flight were closed gracefully, the
/// in-flight one once answered, and that the in-band close loaded (a busy connection
/// makes the drain load it). Returns the daemon, still running.
fn drain_through(mut command: Command, addr: SocketAddr, name: &str) -> ChildGuard {
    let mut idle = idle_client(addr);
    let mut busy = idle_client(addr);
    busy.send_request("GET", "/sleep/300", b"").unwrap();
    let socket = daemon_socket_path(name);
    command.arg("--socket").arg(&socket);
    let (daemon, daemon_log) = spawn_daemon_with(command, SERVING);
    let output = drain_through_daemon(
        socket.to_str().unwrap(),
        &[
            "--port",
            &addr.port().to_string(),
            "--quiet-period",
            "200ms",
            "--json",
        ],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let report = output.json();
    assert_eq!(report["closed_gracefully"], 2, "{report}");
    assert_eq!(report["closed_abortively"], 0, "{report}");
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    assert_eq!(busy.read_response().unwrap().status, 200);
    assert_eq!(busy.wait_closed(5 * SECOND), Closed::Eof);
    daemon_log
        .wait_for_line(5 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon ran the drain");
    // The in-band close loaded: it needs CAP_PERFMON (the unit says why).
    let refused = daemon_log.wait_for_line(SECOND, |line| line.contains("cannot ask HTTP/1.x"));
    assert_eq!(refused, None, "log:\n{}", daemon_log.all_lines().join("\n"));
    daemon
}

#[test]
fn daemon_drains_within_the_units_system_call_filter() {
    let (Some(strace), Some(setpriv), Some(analyze)) = (
        require_tool("strace"),
        require_tool("setpriv"),
        require_tool("systemd-analyze"),
    ) else {
        return;
    };
    let Some(_netns) = Netns::require() else {
        return;
    };
    let unit = Unit::shipped("drain-daemon.service");
    let allowed = system_call_filter(&unit, &analyze);
    let (_server, events) = spawn_demo_server_as(NOBODY, NOBODY, ["--listen", "127.0.0.1:8080"]);
    let addr = events.wait_listening(5 * SECOND).expect("server listening");
    let trace = std::env::temp_dir().join(format!("drain-strace-{}", std::process::id()));
    let mut command = Command::new(strace);
    command
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(&setpriv)
        .args(setpriv_args(&unit))
        .arg(bin_path("drain-daemon"));
    let mut daemon = drain_through(command, addr, "syscalls");
    // The stop is traced too: it must not need anything the filter denies either. The
    // signal goes to the daemon (strace's child), not to strace.
    // strace runs the daemon.
    let traced = daemon.first_child();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(traced),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon
        .wait_timeout(10 * SECOND)
        .unwrap()
        .expect("daemon exits");
    assert!(status.success(), "{status:?}");

    let trace_text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    // Only what drain-daemon called: setpriv's own calls (capset) come before its execve.
    let daemon_part = trace_text
        .split_once("drain-daemon\"")
        .map(|(_, after)| after)
        .expect("strace saw drain-daemon executed");
    let used: BTreeSet<&str> = daemon_part
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then_some(name)
        })
        .collect();
    assert!(
        used.contains("bpf") && used.contains("pidfd_getfd"),
        "{used:?}"
    );
    let denied: Vec<&str> = used
        .iter()
        .copied()
        .filter(|call| !allowed.contains(*call))
        .collect();
    assert!(
        denied.is_empty(),
        "drain-daemon called {denied:?}, which the unit's SystemCallFilter= denies"
    );
}

/// The system calls `unit`'s `SystemCallFilter=` lines allow, applied in order as
/// systemd does for an allow list (`~` lines take away), with groups expanded by
/// `systemd-analyze syscall-filter`.
fn system_call_filter(unit: &Unit, analyze: &Path) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for line in unit.values("SystemCallFilter") {
        let (deny, list) = match line.strip_prefix('~') {
            Some(list) => (true, list),
            None => (false, line),
        };
        for item in list.split_whitespace() {
            for call in expand_syscall_group(item, analyze) {
                if deny {
                    allowed.remove(&call);
                } else {
                    allowed.insert(call);
                }
            }
        }
    }
    assert!(!allowed.is_empty(), "the unit has no SystemCallFilter=");
    allowed
}

fn expand_syscall_group(item: &str, analyze: &Path) -> Vec<String> {
    if !item.starts_with('@') {
        return vec![item.to_string()];
    }
    let output = Command::new(analyze)
        .args(["syscall-filter", item])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-analyze syscall-filter {item}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1) // the group's own name
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .flat_map(|entry| expand_syscall_group(entry, analyze))
        .collect()
}

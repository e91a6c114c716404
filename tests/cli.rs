//! The real `drainctl` binary given wrong values for every option, and a stdout that
//! nobody reads: one clear line on stderr and a documented exit code, never a panic.
//!
//! drainctl runs from `ExecStop=` and preStop hooks, where a panic's backtrace is noise
//! in a journal and exit 101 is a code no script expects. Each case is checked end to
//! end (argument parsing, error rendering, exit code) because clap's own rendering is
//! several lines with a usage block, which a one-line contract must not let through.

use std::{
    os::fd::OwnedFd,
    process::{Command, Output, Stdio},
    time::Duration,
};

use drain_tests::{
    bin_path, daemon_socket_path, idle_client, spawn_daemon, start_server, Closed, Netns,
};

/// Runs drainctl with `args`; stdout goes to `stdout`.
fn drainctl(args: &[&str], stdout: Stdio) -> Output {
    Command::new(bin_path("drainctl"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("run drainctl {args:?}: {e}"))
}

/// The write end of a pipe whose read end is already closed: every write gets EPIPE.
fn closed_pipe() -> Stdio {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().expect("pipe()");
    drop(read);
    Stdio::from(write)
}

fn assert_one_line_error(args: &[&str], output: &Output, code: i32, names: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "drainctl {args:?}: stderr {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "drainctl {args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "drainctl {args:?}: not one line: {stderr:?}"
    );
    assert!(
        lines[0].starts_with("drainctl: ") && lines[0].contains(names),
        "drainctl {args:?}: the error does not name {names}: {stderr:?}"
    );
    assert!(
        output.stdout.is_empty(),
        "drainctl {args:?}: printed on stdout"
    );
}

#[test]
fn every_option_with_a_wrong_value_is_one_line_and_exit_2() {
    // In a private namespace when possible: should a case be accepted by mistake, the
    // drain it starts finds no listener there instead of touching the host's ports.
    let _netns = nix::unistd::geteuid()
        .is_root()
        .then(|| Netns::new().ok())
        .flatten();
    // Port 1 (tcpmux) where a port is needed: nothing listens there.
    let drain = |extra: &[&'static str]| {
        let mut args = vec!["drain", "--port", "1"];
        args.extend_from_slice(extra);
        args
    };
    let mut cases: Vec<(Vec<&str>, &str)> = Vec::new();
    for bad in ["0", "70000", "65536", "abc", "-1", ""] {
        cases.push((vec!["drain", "--port", bad], "--port"));
        cases.push((vec!["release", "--port", bad], "--port"));
        cases.push((vec!["status", "--port", bad], "--port"));
    }
    let durations: [(&str, &[&str]); 7] = [
        (
            "--timeout",
            &[
                "soon",
                "18446744073709551615",
                "25h",
                "-1s",
                "-1",
                "1.5x",
                "",
            ],
        ),
        (
            "--poll-interval",
            &["0s", "0", "5ms", "2min", "-100ms", "x"],
        ),
        ("--quiet-period", &["-1s", "2d", "abc"]),
        ("--close-grace", &["-1s", "2d", "1 lightyear"]),
        ("--spread", &["-1s", "2d", "1s1"]),
        ("--accept-grace", &["-5s", "2d", "5 s s"]),
        ("--interval", &["0s", "-1s", "2d"]),
    ];
    for (option, values) in durations {
        for value in values {
            let mut args = drain(&[option, value]);
            if option == "--interval" {
                args.extend(["--batch", "10"]);
            }
            cases.push((args, option));
        }
    }
    for bad in ["-1s", "2d", "x"] {
        cases.push((vec!["status", "--quiet-period", bad], "--quiet-period"));
    }
    for bad in ["0", "101", "-5", "abc", "1000"] {
        cases.push((drain(&["--batch", bad]), "--batch"));
    }
    // pid_max is at most 2^22, so 2147483647 names no process.
    for bad in ["-5", "0", "abc", "2147483647"] {
        cases.push((drain(&["--pid", bad]), "--pid"));
    }
    cases.extend([
        (drain(&["--bogus"]), "--bogus"),
        (drain(&["--forse"]), "--force"),
        (vec!["status", "--bogus"], "--bogus"),
        (vec!["release", "--port", "1", "--bogus"], "--bogus"),
        (drain(&["--batch", "10", "--spread", "1s"]), "--spread"),
        (drain(&["--interval", "1s"]), "--batch"),
        (drain(&["--timeout"]), "--timeout"),
        (vec!["drain"], "--port"),
        (vec!["-q", "-v", "status"], "--quiet"),
        (
            vec!["--standalone", "--daemon-socket", "/x", "status"],
            "--standalone",
        ),
        (vec!["status", "--address", "127.0.0.1"], "--port"),
        (
            vec!["status", "--port", "1", "--address", "not-an-ip"],
            "--address",
        ),
        (
            vec!["status", "--inventory-source", "bogus"],
            "--inventory-source",
        ),
        (vec!["frobnicate"], "frobnicate"),
        (vec![], "command"),
    ]);
    for (args, names) in &cases {
        let output = drainctl(args, Stdio::piped());
        assert_one_line_error(args, &output, 2, names);
    }

    // A daemon that cannot be reached is the environment's fault: exit 3, one line.
    let args = [
        "--daemon-socket",
        "/nonexistent/drain-daemon.sock",
        "release",
        "--port",
        "1",
    ];
    let output = drainctl(&args, Stdio::piped());
    assert_one_line_error(&args, &output, 3, "/nonexistent/drain-daemon.sock");
}

#[test]
fn status_into_a_closed_stdout_exits_0_quietly() {
    for args in [&["status"][..], &["status", "--json"]] {
        let output = drainctl(args, closed_pipe());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("drainctl:"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_drain_whose_stdout_is_closed_still_drains_and_exits_with_its_outcome() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut idle = idle_client(addr);
    for json in [false, true] {
        let mut args = vec!["drain", "--port", "8080", "--timeout", "10s"];
        if json {
            args.push("--json");
        }
        let output = drainctl(&args, closed_pipe());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // The first drain closed the idle connection gracefully: it ran to its end.
    assert_eq!(idle.wait_closed(Duration::from_secs(5)), Closed::Eof);
    assert!(events.all_lines().iter().any(|l| l.starts_with("eof ")));
}

#[test]
fn release_prints_json_when_asked() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let release = || {
        let args = ["--standalone", "release", "--port", "8080", "--json"];
        let output = drainctl(&args, Stdio::piped());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("release --json printed no JSON ({e}): {output:?}"));
        json
    };
    let drain = drainctl(
        &["--standalone", "drain", "--port", "8080", "--timeout", "5s"],
        Stdio::piped(),
    );
    assert_eq!(drain.status.code(), Some(0), "{drain:?}");
    assert_eq!(
        release(),
        serde_json::json!({"port": 8080, "released": true})
    );
    assert_eq!(
        release(),
        serde_json::json!({"port": 8080, "released": false})
    );
}

#[test]
fn a_closed_stderr_changes_no_exit_code() {
    let _netns = nix::unistd::geteuid()
        .is_root()
        .then(|| Netns::new().ok())
        .flatten();
    for (args, code) in [
        (&["drain", "--port", "0"][..], 2),
        (&["status", "-v"], 0),
        (
            &["--daemon-socket", "/nonexistent", "release", "--port", "1"],
            3,
        ),
    ] {
        let output = Command::new(bin_path("drainctl"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(closed_pipe())
            .status()
            .unwrap_or_else(|e| panic!("run drainctl {args:?}: {e}"));
        assert_eq!(output.code(), Some(code), "drainctl {args:?}");
    }
}

/// Asserts `--json` made a failed run print exactly one error object on stdout, with
/// the kind and exit code of its class, besides the usual one line on stderr.
fn assert_json_error(args: &[&str], output: &Output, code: i32, kind: &str, names: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "drainctl {args:?}: stderr {stderr:?}"
    );
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("drainctl: ") && line.contains(names),
        "drainctl {args:?}: no error line naming {names} on stderr: {stderr:?}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "drainctl {args:?}: not one line on stdout: {stdout:?}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("drainctl {args:?}: the error on stdout is not JSON ({e}): {stdout:?}")
    });
    let error = &json["error"];
    assert_eq!(error["kind"], kind, "drainctl {args:?}: {json}");
    assert_eq!(error["exit_code"], code, "drainctl {args:?}: {json}");
    let message = error["message"].as_str().unwrap_or_default();
    assert_eq!(
        format!("drainctl: {message}"),
        line,
        "drainctl {args:?}: the JSON message is not the stderr line"
    );
    assert_eq!(
        json.as_object().map(|o| o.len()),
        Some(1),
        "drainctl {args:?}: {json}"
    );
}

#[test]
fn every_class_of_error_is_json_on_stdout_under_json() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    // Usage (exit 2): clap's refusals and the values drainctl checks itself.
    for (args, names) in [
        (&["drain", "--port", "0", "--json"][..], "--port"),
        (&["drain", "--json", "--port", "1", "--bogus"], "--bogus"),
        (
            &["status", "--json", "--quiet-period", "-1s"],
            "--quiet-period",
        ),
        (&["release", "--json"], "--port"),
        (&["drain", "--port", "1", "--pid", "0", "--json"], "--pid"),
    ] {
        let output = drainctl(args, Stdio::piped());
        assert_json_error(args, &output, 2, "usage", names);
    }
    // Without --json, stdout stays empty (the existing one-line contract).
    let output = drainctl(&["drain", "--port", "0"], Stdio::piped());
    assert!(output.stdout.is_empty(), "{output:?}");

    // Environment (exit 3): the drain's own error, standalone.
    let args = ["--standalone", "drain", "--port", "1", "--json"];
    let output = drainctl(&args, Stdio::piped());
    assert_json_error(
        &args,
        &output,
        3,
        "environment",
        "no TCP listener on port 1",
    );
    // Environment: a daemon that cannot be reached, for each command that uses one.
    for command in ["drain", "release"] {
        let args = [
            "--daemon-socket",
            "/nonexistent/drain-daemon.sock",
            command,
            "--port",
            "1",
            "--json",
        ];
        let output = drainctl(&args, Stdio::piped());
        assert_json_error(&args, &output, 3, "environment", "/nonexistent");
    }
    // Environment, relayed: the real daemon's error reply becomes drainctl's.
    let socket = daemon_socket_path("json-errors");
    let (_daemon, _log) = spawn_daemon(&socket);
    let socket = socket.to_str().expect("a UTF-8 socket path");
    let args = ["--daemon-socket", socket, "drain", "--port", "1", "--json"];
    let output = drainctl(&args, Stdio::piped());
    assert_json_error(
        &args,
        &output,
        3,
        "environment",
        "no TCP listener on port 1",
    );

    // Failure (exit 4): a daemon that answers something that is not a reply.
    let fake = std::env::temp_dir().join(format!("drain-test-{}-fake.sock", std::process::id()));
    let _ = std::fs::remove_file(&fake);
    let listener = std::os::unix::net::UnixListener::bind(&fake).expect("bind a fake daemon");
    let fake_daemon = std::thread::spawn(move || {
        use std::io::{BufRead as _, Write as _};
        let (stream, _) = listener.accept().expect("accept drainctl");
        let mut request = String::new();
        let _ = std::io::BufReader::new(&stream).read_line(&mut request);
        let _ = (&stream).write_all(b"this is not a reply\n");
    });
    let fake_path = fake.to_str().expect("a UTF-8 socket path");
    let args = [
        "--daemon-socket",
        fake_path,
        "release",
        "--port",
        "1",
        "--json",
    ];
    let output = drainctl(&args, Stdio::piped());
    fake_daemon.join().expect("the fake daemon answered");
    let _ = std::fs::remove_file(&fake);
    assert_json_error(&args, &output, 4, "failure", "invalid reply");
}

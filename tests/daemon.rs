//! drainctl through drain-daemon: the same drain, run by the daemon over its control
//! socket, and the errors a user sees when the daemon is not there.

use std::time::Duration;

use drain_tests::{
    bin_path, run_drainctl, spawn_demo_server, ChildGuard, Closed, EventReader, KeepAliveClient,
    Netns,
};

const SECOND: Duration = Duration::from_secs(1);

fn spawn_daemon(socket: &std::path::Path) -> (ChildGuard, EventReader) {
    let mut child = std::process::Command::new(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn drain-daemon");
    let log = EventReader::from_reader("drain-daemon", child.stderr.take().unwrap());
    log.wait_for_line(10 * SECOND, |line| line.contains("serving drainctl"))
        .expect("drain-daemon starts serving");
    (ChildGuard(child), log)
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "drain-test-{}-{name}/control.sock",
        std::process::id()
    ))
}

#[test]
fn drainctl_drains_through_the_daemon() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = socket_path("drain");
    let (_daemon, daemon_log) = spawn_daemon(&socket);
    let (_server, _events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
    let addr = _events.wait_listening(5 * SECOND).unwrap();
    let mut idle = KeepAliveClient::connect(addr).unwrap();
    assert_eq!(idle.request("GET", "/", b"").unwrap().status, 200);

    let output = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "drain",
            "--port",
            "8080",
            "--quiet-period",
            "200ms",
            "--json",
        ],
        30 * SECOND,
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_eq!(output.json()["closed_gracefully"], 1);
    assert_eq!(idle.wait_closed(5 * SECOND), Closed::Eof);
    daemon_log
        .wait_for_line(5 * SECOND, |line| line.contains("drain requested"))
        .expect("the daemon ran the drain");

    let release = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "release",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(release.code, Some(0));
    assert!(
        release.stdout.contains("accepted again"),
        "{}",
        release.stdout
    );
    KeepAliveClient::connect(addr).expect("accepted after release through the daemon");
}

#[test]
fn daemon_errors_reach_drainctl_with_their_exit_code() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = socket_path("errors");
    let (_daemon, _log) = spawn_daemon(&socket);
    let output = run_drainctl(
        [
            "--daemon-socket",
            socket.to_str().unwrap(),
            "drain",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(output.code, Some(3));
    assert!(
        output
            .stderr_text()
            .contains("no TCP listener on port 8080"),
        "{}",
        output.stderr_text()
    );
}

#[test]
fn an_unreachable_daemon_named_explicitly_is_an_environment_error() {
    let output = run_drainctl(
        [
            "--daemon-socket",
            "/nonexistent/drain-daemon.sock",
            "drain",
            "--port",
            "8080",
        ],
        10 * SECOND,
    );
    assert_eq!(output.code, Some(3));
    assert!(
        output.stderr_text().contains("is drain-daemon running?"),
        "{}",
        output.stderr_text()
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let socket = socket_path("twice");
    let (_daemon, _log) = spawn_daemon(&socket);
    let second = std::process::Command::new(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another drain-daemon serves"));
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let file = socket_path("not-a-socket");
    let dir = file.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&file, b"precious").unwrap();
    let link = dir.join("link.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&file, &link).unwrap();

    for (path, kind) in [(&file, "a regular file"), (&link, "a symbolic link")] {
        let mut daemon = ChildGuard(
            std::process::Command::new(bin_path("drain-daemon"))
                .arg("--socket")
                .arg(path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = daemon.wait_timeout(10 * SECOND).unwrap();
        let mut stderr = String::new();
        if status.is_some() {
            std::io::Read::read_to_string(&mut daemon.0.stderr.take().unwrap(), &mut stderr)
                .unwrap();
        }
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"precious",
            "--socket {kind}"
        );
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(status.and_then(|s| s.code()), Some(3), "{stderr}");
        assert!(
            stderr.contains(&format!("{} is {kind}, not a socket", path.display())),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

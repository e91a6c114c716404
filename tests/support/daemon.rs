//! Running the real `drain-daemon` from tests: plainly, under a capability wrapper
//! (setpriv, as the unit would), or under socket activation (systemd-socket-activate).
//! One start-up path, so every test waits for the same "serving" line.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{bin_path, ChildGuard, EventReader};

/// A socket path under the temporary directory, unique to this test process and `name`.
pub fn daemon_socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "drain-test-{}-{name}/control.sock",
        std::process::id()
    ))
}

/// `drain-daemon --socket SOCKET`, once it serves.
pub fn spawn_daemon(socket: &Path) -> (ChildGuard, EventReader) {
    let mut command = Command::new(bin_path("drain-daemon"));
    command.arg("--socket").arg(socket);
    spawn_daemon_with(command, SERVING)
}

/// The log line of a daemon that serves its socket.
pub const SERVING: &str = "serving drainctl";

/// Runs a prepared command that ends up executing `drain-daemon` (directly or through
/// a wrapper) and waits until its stderr has a line containing `ready` ([`SERVING`], or
/// a wrapper's own line when the wrapper starts the daemon later). Its stderr (the log)
/// is returned line by line. Panics if the line does not come within 10 s (test contract).
pub fn spawn_daemon_with(mut command: Command, ready: &str) -> (ChildGuard, EventReader) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let log = EventReader::from_reader("drain-daemon", child.stderr.take().expect("stderr"));
    let child = ChildGuard(child);
    log.wait_for_line(Duration::from_secs(10), |line| line.contains(ready))
        .unwrap_or_else(|| panic!("{command:?} did not log {ready:?}: {:?}", log.all_lines()));
    (child, log)
}

/// `drain-daemon --socket SOCKET` started by `activate` (the path of
/// `systemd-socket-activate`) the way systemd starts it for `drain-daemon.socket`: the
/// wrapper listens on the path itself, starts the daemon on the first connection and
/// passes the socket as fd 3 with LISTEN_FDS/LISTEN_PID. It execs the daemon, so the
/// guard's pid is the daemon's. Returns once the wrapper listens.
pub fn spawn_socket_activated_daemon(activate: &Path, socket: &Path) -> (ChildGuard, EventReader) {
    std::fs::create_dir_all(socket.parent().expect("a socket path has a directory"))
        .unwrap_or_else(|e| panic!("creating the directory of {}: {e}", socket.display()));
    let mut command = Command::new(activate);
    command
        .arg("--listen")
        .arg(socket)
        .arg(bin_path("drain-daemon"))
        .arg("--socket")
        .arg(socket);
    spawn_daemon_with(command, "Listening on")
}

/// `drainctl --daemon-socket SOCKET drain ARGS...`, run to its end (30 s at most).
pub fn drain_through_daemon(socket: &str, args: &[&str]) -> crate::DrainctlOutput {
    let mut all = vec!["--daemon-socket", socket, "drain"];
    all.extend_from_slice(args);
    crate::run_drainctl(all, Duration::from_secs(30))
}

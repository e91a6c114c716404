//! Running the real `drainctl` binary from tests and the demo.
//!
//! End-to-end tests must exercise what users run, exit codes and output included, so
//! they spawn the built binary (in the caller's network namespace) rather than calling
//! the library.

use std::{
    ffi::OsStr,
    io::Read,
    process::{Command, ExitStatus, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use crate::{bin_path, ChildGuard, EventReader};

/// A running `drainctl`: its stderr (the log) arrives line by line, its stdout (the
/// report) is collected whole.
pub struct Drainctl {
    child: ChildGuard,
    log: EventReader,
    stdout: Option<JoinHandle<String>>,
}

/// How a `drainctl` run ended.
#[derive(Debug)]
pub struct DrainctlOutput {
    /// The exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: Vec<String>,
}

impl DrainctlOutput {
    /// The report of `drainctl drain --json`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("drainctl stdout is not JSON ({e}): {:?}", self.stdout))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// Starts `drainctl ARGS...` in the calling thread's network namespace.
/// Panics if the binary is missing (test helper contract).
pub fn spawn_drainctl<I, S>(args: I) -> Drainctl
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_drainctl_with(Command::new(bin_path("drainctl")).args(args))
}

/// Like [`spawn_drainctl`] for a prepared command (to set a uid or environment).
pub fn spawn_drainctl_with(command: &mut Command) -> Drainctl {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn drainctl: {e}"));
    let label = format!("drainctl {}", child.id());
    let log = EventReader::from_reader(&label, child.stderr.take().expect("stderr pipe"));
    let mut out = child.stdout.take().expect("stdout pipe");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    Drainctl {
        child: ChildGuard(child),
        log,
        stdout: Some(stdout),
    }
}

/// Starts `drainctl ARGS...` with the faults of `failpoints` injected
/// (`DRAIN_FAILPOINTS`, see drain-daemon's `failpoint` module; debug builds only).
pub fn drainctl_with_faults(failpoints: &str, args: &[&str]) -> Drainctl {
    spawn_drainctl_with(
        Command::new(bin_path("drainctl"))
            .env("DRAIN_FAILPOINTS", failpoints)
            .args(args),
    )
}

/// `drainctl ARGS...`, for [`spawn_drainctl_with`], in the PID and mount namespaces of
/// the command that `unshare --pid --fork --mount-proc` (the process `wrapper`) runs as
/// pid 1: it sees that command and its descendants only.
pub fn drainctl_in_pid_namespace_of<I, S>(wrapper: &ChildGuard, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--target={}", wrapper.first_child()))
        .args(["--pid", "--mount", "--"])
        .arg(bin_path("drainctl"))
        .args(args);
    command
}

/// Runs `drainctl ARGS...` to its end (at most `timeout`, then it is killed).
pub fn run_drainctl<I, S>(args: I, timeout: Duration) -> DrainctlOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_drainctl(args).wait(timeout)
}

impl Drainctl {
    /// The log lines (stderr) as they arrive.
    pub fn log(&self) -> &EventReader {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Waits (at most 10 s) until drainctl says new connections go to the successor
    /// listeners it found.
    pub fn wait_until_handing_over(&self) {
        self.log
            .wait_for_line(Duration::from_secs(10), |line| {
                line.contains("new connections go to the successor listeners")
            })
            .expect("drainctl hands new connections to the successors");
    }

    /// Waits (at most 10 s) until drainctl says the steering is in place and new
    /// connections are refused (not the warning before it when the refusal cannot be
    /// pinned, which says so too).
    pub fn wait_until_refusing(&self) {
        self.log
            .wait_for_line(Duration::from_secs(10), |line| {
                line.contains("new connections are refused; draining")
            })
            .expect("drainctl reports that new connections are refused");
    }

    /// Sends a signal (SIGINT, SIGTERM, SIGKILL…).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.child
            .signal(signal)
            .unwrap_or_else(|e| panic!("signal drainctl: {e}"));
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// Waits for the exit (killing it after `timeout`) and collects the output.
    pub fn wait(mut self, timeout: Duration) -> DrainctlOutput {
        let status: Option<ExitStatus> = self
            .child
            .wait_timeout(timeout)
            .unwrap_or_else(|e| panic!("wait for drainctl: {e}"));
        if status.is_none() {
            let _ = self.child.0.kill();
            let _ = self.child.0.wait();
        }
        let stdout = self
            .stdout
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        self.log.wait_ended(Duration::from_secs(2));
        DrainctlOutput {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr: self.log.all_lines(),
        }
    }
}

/// The `phase` of the last drain of `port` as `drainctl status` shows it (`draining`,
/// `drained`, `deadline_reached`, `cancelled`, `failed`), `None` when it shows none.
pub fn drain_phase(port: u16) -> Option<String> {
    let output = run_drainctl(
        ["status", "--port", &port.to_string(), "--json"],
        Duration::from_secs(20),
    );
    assert_eq!(output.code, Some(0), "status: {}", output.stderr_text());
    output.json()["ports"][0]["drain"]["phase"]
        .as_str()
        .map(str::to_string)
}

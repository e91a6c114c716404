//! What `drainctl` shows people: the drain's progress (a live line on a terminal, log
//! lines otherwise), its final report, and the status table. The JSON outputs are the
//! serialized data types themselves; this is only the human side.

use std::{
    io::{self, IsTerminal as _, Write},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tracing::info;

use crate::{
    announce::Phase,
    drain::{DrainReport, Outcome, Progress},
    inventory::{rhythm::pauses_too_briefly, SourceKind},
    status::{self, Status},
};

/// Whether a live progress line is on the terminal (log lines then clear it first).
static LIVE_LINE: AtomicBool = AtomicBool::new(false);

/// Shows a drain's progress: a line redrawn in place on a terminal, otherwise a log
/// line whenever the counts change.
pub struct ProgressView {
    port: u16,
    live: bool,
    last: Option<(usize, usize, u32)>,
}

impl ProgressView {
    /// `live`: draw the live line (stderr is a terminal and logs are not quieted).
    pub fn new(port: u16, live: bool) -> Self {
        Self {
            port,
            live,
            last: None,
        }
    }

    pub fn show(&mut self, progress: &Progress) {
        if self.live {
            let line = live_line(self.port, progress, terminal_width());
            let mut stderr = io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
            LIVE_LINE.store(true, Ordering::Relaxed);
            return;
        }
        let counts = (progress.idle, progress.in_flight, progress.accept_queue);
        if self.last == Some(counts) {
            return;
        }
        self.last = Some(counts);
        info!(
            idle = progress.idle,
            in_flight = progress.in_flight,
            accept_queue = progress.accept_queue,
            closed = progress.closed,
            refused = progress.refused,
            time_left_ms = progress.time_left_ms,
            "draining port {}",
            self.port
        );
    }

    /// Ends the live line so what follows starts on a fresh line.
    pub fn finish(&self) {
        if self.live && LIVE_LINE.swap(false, Ordering::Relaxed) {
            let _ = writeln!(io::stderr());
        }
    }
}

/// Whether progress should be a live line: stderr is a terminal.
pub fn live_progress_wanted() -> bool {
    io::stderr().is_terminal()
}

/// The log writer: stderr, clearing a live progress line before each log line (it is
/// redrawn at the next pass).
pub fn log_writer() -> impl io::Write {
    if LIVE_LINE.swap(false, Ordering::Relaxed) {
        let _ = io::stderr().write_all(b"\r\x1b[2K");
    }
    io::stderr()
}

/// Writes one error line on stderr. Never panics (`eprintln!` does when stderr is
/// closed): with nobody reading, the exit code is all that is left to say it.
pub fn error_line(message: &str) {
    let _ = writeln!(io::stderr().lock(), "drainctl: {message}");
}

/// The JSON object a failed command prints on stdout under `--json` (besides its line
/// on stderr), so a script reading stdout gets an object either way:
/// `{"error":{"kind":"environment","exit_code":3,"message":"..."}}`. The kinds are the
/// exit codes' classes; the message is the stderr line without its `drainctl: ` prefix.
#[derive(Debug, serde::Serialize)]
struct ErrorObject<'a> {
    error: ErrorBody<'a>,
}

#[derive(Debug, serde::Serialize)]
struct ErrorBody<'a> {
    kind: &'static str,
    exit_code: u8,
    message: &'a str,
}

/// Writes a failed command's error: one line on stderr always, and with `json` one
/// object on stdout too (see [`ErrorObject`]). `kind` names the exit code's class.
pub fn error(message: &str, kind: &'static str, exit_code: u8, json: bool) {
    error_line(message);
    if !json {
        return;
    }
    let object = ErrorObject {
        error: ErrorBody {
            kind,
            exit_code,
            message,
        },
    };
    // Nobody to tell if stdout is gone too: the line on stderr and the exit code stay.
    let _ = to_stdout(|out| writeln!(out, "{}", serde_json::to_string(&object)?));
}

/// Writes what a command prints on stdout. A reader that went away (`drainctl status |
/// head -1`) is no error: it read what it wanted, and `println!` would panic on the
/// EPIPE. Other write errors are returned for the command to report.
pub fn to_stdout(print: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    match print(&mut out).and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// A drain phase as people read it; the JSON output has the snake_case names.
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Draining => "draining",
        Phase::Drained => "drained",
        Phase::DeadlineReached => "deadline reached",
        Phase::Cancelled => "cancelled",
        Phase::Failed => "failed",
    }
}

pub fn print_report(report: &DrainReport, out: &mut dyn Write) -> io::Result<()> {
    let seconds = report.elapsed_ms as f64 / 1000.0;
    let closed = report.closed_gracefully + report.closed_abortively;
    let headline = match report.outcome {
        Outcome::Drained => format!("port {}: drained in {seconds:.2}s", report.port),
        Outcome::DeadlineReached => format!(
            "port {}: deadline reached after {seconds:.2}s, {} connection(s) still open, {} waiting to be accepted",
            report.port,
            report.remaining.len(),
            report.accept_queue
        ),
        Outcome::Cancelled => format!(
            "port {}: interrupted after {seconds:.2}s, {} connection(s) still open",
            report.port,
            report.remaining.len()
        ),
    };
    writeln!(out, "{headline}")?;
    writeln!(
        out,
        "  closed: {closed} ({} idle, {} busy between requests; {} graceful FIN, {} reset)   finished on their own: {}   new connections refused: {}, to successors: {}",
        closed - report.closed_at_boundary,
        report.closed_at_boundary,
        report.closed_gracefully,
        report.closed_abortively,
        report.finished_on_their_own,
        report.refused_connections,
        report.steered_connections
    )?;
    if report.connection_close_sent > 0 {
        writeln!(
            out,
            "  asked to close: {} HTTP/1.x client(s) got `Connection: close` on a response and left (counted in finished on their own)",
            report.connection_close_sent
        )?;
    }
    if report.websocket_close_sent > 0 {
        writeln!(
            out,
            "  websockets: {} client(s) got a close frame (1001, going away) and left (counted in finished on their own)",
            report.websocket_close_sent
        )?;
    }
    if report.unknown_owner > 0 {
        writeln!(
            out,
            "  left alone: {} connection(s) on the port held by no visible process (not provably this drain's)",
            report.unknown_owner
        )?;
    }
    if report.forced_gracefully + report.forced_abortively > 0 {
        writeln!(
            out,
            "  forced at the deadline (--force): {} with a FIN, {} reset",
            report.forced_gracefully, report.forced_abortively
        )?;
    }
    if !report.remaining.is_empty() {
        writeln!(
            out,
            "  {:<40} {:<11} {:<12} {:>10} {:>10}  ACTIVITY",
            "PEER", "STATE", "OWNER", "LAST DATA", "TRACKED"
        )?;
        for remaining in &report.remaining {
            let owner = match (remaining.owner_pid, &remaining.owner_command) {
                (Some(pid), Some(command)) => format!("{pid}/{command}"),
                _ => "-".to_string(),
            };
            let last_data = remaining.last_data_ms.map_or("-".to_string(), |ms| {
                format!("{:.1}s ago", f64::from(ms) / 1000.0)
            });
            let rhythm = match remaining.client_pause_ms {
                Some(ms) if pauses_too_briefly(Duration::from_millis(ms)) => {
                    format!("; the client sends back to back ({ms} ms pause): no moment to close")
                }
                Some(ms) => format!("; the client pauses {ms} ms between requests"),
                None => String::new(),
            };
            writeln!(
                out,
                "  {:<40} {:<11} {:<12} {:>10} {:>9.1}s  {}{rhythm}",
                remaining.peer.to_string(),
                remaining.state,
                owner,
                last_data,
                remaining.tracked_ms as f64 / 1000.0,
                remaining.activity
            )?;
        }
    }
    if !report.listener_kept_by.is_empty() {
        let kept_by: Vec<String> = report
            .listener_kept_by
            .iter()
            .map(|p| format!("{}/{}", p.pid, p.command))
            .collect();
        writeln!(
            out,
            "  the listener is also held by {}, which outlives the server: new connections were refused only during the drain, so the next instance that inherits the listener gets them",
            kept_by.join(", ")
        )?;
    }
    if report.still_refusing {
        let port = report.port;
        let steered = if report.successors > 0 {
            format!("go to its {} successor listener(s)", report.successors)
        } else {
            "stay refused".to_string()
        };
        let at_most =
            humantime::format_duration(Duration::from_millis(report.refusal_ends_within_ms));
        let undo = match report.refusal_held_by {
            Some(pid) => format!("held by process {pid}: kill it to undo that"),
            None => format!("drainctl release --port {port} undoes that"),
        };
        writeln!(
            out,
            "  new connections to port {port} {steered} until the drained listener closes, at most {at_most} ({undo})"
        )?;
    }
    Ok(())
}

pub fn print_status(status: &Status, out: &mut dyn Write) -> io::Result<()> {
    if status.ports.is_empty() {
        return writeln!(out, "no TCP listener in this network namespace");
    }
    writeln!(
        out,
        "{:<6} {:<28} {:<24} {:>9} {:>6} {:>5} {:>9}  DRAIN",
        "PORT", "LISTENER", "OWNERS", "ACCEPT-Q", "CONNS", "IDLE", "IN-FLIGHT"
    )?;
    for port in &status.ports {
        let drain = match (&port.drain, port.refusing_new_connections) {
            (Some(drain), _) if drain.running => format!(
                "draining {:.1}s of {:.0}s, {} closed, {} refused{} (pid {})",
                drain.elapsed_ms as f64 / 1000.0,
                drain.timeout_ms as f64 / 1000.0,
                drain.closed,
                drain.refused,
                // Only a handover steers: the column stays short otherwise.
                if drain.steered > 0 {
                    format!(", {} to successors", drain.steered)
                } else {
                    String::new()
                },
                drain.pid
            ),
            (Some(drain), refusing) => format!(
                "{} after {:.1}s, {} closed{}",
                phase_name(drain.phase),
                drain.elapsed_ms as f64 / 1000.0,
                drain.closed,
                if refusing {
                    "; refusing new connections"
                } else {
                    ""
                }
            ),
            (None, true) => "refusing new connections".to_string(),
            (None, false) => "-".to_string(),
        };
        let mut listeners = port.listeners.iter();
        let first = listeners.next();
        let listener_row = |listener: Option<&status::ListenerStatus>| match listener {
            Some(listener) => (
                listener.address.to_string(),
                listener
                    .owners
                    .iter()
                    .map(|owner| format!("{}/{}", owner.pid, owner.command))
                    .collect::<Vec<_>>()
                    .join(","),
                match listener.accept_queue_limit {
                    Some(limit) => format!("{}/{limit}", listener.accept_queue),
                    None => listener.accept_queue.to_string(),
                },
            ),
            None => (
                "(no listener)".to_string(),
                "-".to_string(),
                "-".to_string(),
            ),
        };
        let (address, owners, queue) = listener_row(first);
        writeln!(
            out,
            "{:<6} {:<28} {:<24} {:>9} {:>6} {:>5} {:>9}  {drain}",
            port.port,
            address,
            owners,
            queue,
            port.connections.total,
            port.connections.idle,
            port.connections.in_flight
        )?;
        for listener in listeners {
            let (address, owners, queue) = listener_row(Some(listener));
            writeln!(out, "{:<6} {address:<28} {owners:<24} {queue:>9}", "")?;
        }
    }
    if status.source == SourceKind::Procfs {
        writeln!(
            out,
            "(read from /proc/net/tcp: without TCP_INFO no connection is judged idle)"
        )?;
    }
    Ok(())
}

/// The live progress line, in at most `width - 1` columns (a line that reaches the last
/// column wraps, and `\r` then redraws only its second row): the long form when it
/// fits, else a short one, cut if even that does not fit.
fn live_line(port: u16, progress: &Progress, width: usize) -> String {
    let left = progress.time_left_ms as f64 / 1000.0;
    let long = format!(
        "draining :{port}  idle {}  in flight {}  queued {}  closed {}  refused {}  {left:.1}s left",
        progress.idle, progress.in_flight, progress.accept_queue, progress.closed, progress.refused
    );
    let room = width.saturating_sub(1).max(1);
    if long.len() <= room {
        return long;
    }
    let short = format!(
        ":{port} idle {} busy {} q {} closed {} refused {} {left:.0}s",
        progress.idle, progress.in_flight, progress.accept_queue, progress.closed, progress.refused
    );
    short.chars().take(room).collect()
}

/// The terminal's width in columns (stderr's), or 80 when it cannot be read.
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(io::stderr())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|&columns| columns > 0)
        .unwrap_or(80)
}

#[cfg(test)]
mod live_line_tests {
    use super::*;

    fn progress(n: u64) -> Progress {
        Progress {
            elapsed_ms: 0,
            time_left_ms: 86_400_000,
            idle: n as usize,
            in_flight: n as usize,
            accept_queue: n as u32,
            closed: n,
            refused: n,
            steered: 0,
        }
    }

    #[test]
    fn the_live_line_never_reaches_the_last_column() {
        for width in [20, 40, 80, 120] {
            for n in [0, 100_000, 4_000_000_000] {
                let line = live_line(65535, &progress(n), width);
                assert!(line.chars().count() < width, "{width}: {line:?}");
            }
        }
        // The long form where it fits.
        assert!(live_line(8080, &progress(3), 120).contains("in flight 3"));
    }
}

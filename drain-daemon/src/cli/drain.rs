//! `drainctl drain`: drain a port, through drain-daemon when one serves this network
//! namespace ([`crate::control::client`]), from this process otherwise.

use std::{path::Path, time::Duration};

use super::{signal, view, Route};
use crate::{
    app::{Exit, Failure},
    control::client::ViaDaemon,
    drain::{self, DrainPlan, Outcome, Pace, Progress},
    duration,
};

#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The TCP port whose listener is drained (1-65535).
    #[arg(short, long, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Give up after this long and report what remains (e.g. 30s, 500ms, 2min, 1m30s;
    /// at most 1 day).
    #[arg(short, long, default_value = "30s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::TIMEOUT.parse(text))]
    pub timeout: Duration,
    /// How often the port's sockets are scanned (10ms to 1min).
    #[arg(long, default_value = "100ms", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::POLL_INTERVAL.parse(text))]
    pub poll_interval: Duration,
    /// A connection counts as idle only after moving no data for this long.
    #[arg(long, default_value = "1s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::QUIET_PERIOD.parse(text))]
    pub quiet_period: Duration,
    /// After the server was made to read EOF on an idle connection, how long it may keep
    /// it open before drainctl sends the FIN itself (and, with --force, how long forced
    /// connections get before they are reset).
    #[arg(long, default_value = "2s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::CLOSE_GRACE.parse(text))]
    pub close_grace: Duration,
    /// Close the idle connections evenly over this window; 0s closes them all at once
    /// [default: 10ms per connection idle at the start, at most a third of --timeout
    /// and at most 10s].
    #[arg(long, conflicts_with = "batch", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::SPREAD.parse(text))]
    pub spread: Option<Duration>,
    /// Instead of --spread: close this percentage (1-100) of the connections idle at
    /// the start every --interval.
    #[arg(long, value_name = "PCT", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u8).range(1..=100))]
    pub batch: Option<u8>,
    /// The batch interval of --batch.
    #[arg(long, default_value = "1s", requires = "batch", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::INTERVAL.parse(text))]
    pub interval: Duration,
    /// At the deadline, close what remains: FIN first, RST after --close-grace.
    #[arg(long)]
    pub force: bool,
    /// Keep accepting new connections this long before refusing them (the time load
    /// balancers need to see the instance leave).
    #[arg(long, default_value = "0s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::ACCEPT_GRACE.parse(text))]
    pub accept_grace: Duration,
    /// Drain only the listeners of this process and its descendants (the old service);
    /// the port's other listeners (a successor with SO_REUSEPORT) get the new
    /// connections. Default: every listener at the start drains, and listeners that
    /// appear later get the new connections.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_pid)]
    pub pid: Option<i32>,
    /// Hand new connections to the listener on this other port of the same host (and
    /// network namespace) instead of refusing them: a new instance that cannot share the
    /// drained port. It must be listening when the drain starts.
    #[arg(long, value_name = "P", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub successor_port: Option<u16>,
    /// Never write `Connection: close` into the HTTP/1.x responses of busy connections,
    /// nor websocket close frames (close them only between requests, as for other
    /// protocols).
    #[arg(long)]
    pub no_connection_close: bool,
    /// The port's upgraded connections are websockets: send a busy websocket a close
    /// frame (1001, going away) after a server message that answers one of the client's,
    /// instead of closing it between messages (clients then see 1006). Off by default:
    /// a websocket frame's shape does not tell it from a binary protocol's message, and
    /// no other protocol may get one.
    #[arg(long, conflicts_with = "no_connection_close")]
    pub websocket_close: bool,
    /// After the drain, new connections stay refused until the drained listener closes
    /// (the server's stop), for at most this long: a server that keeps running gets them
    /// again then, also when drainctl was killed (the refusal then ends at the latest
    /// this long after --timeout). 0s: the refusal ends with the drain.
    #[arg(long, default_value = "90s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::KEEP_REFUSING.parse(text))]
    pub keep_refusing: Duration,
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

impl DrainArgs {
    /// The longest default spread: past it, a wider window only slows stops down.
    const MAX_DEFAULT_SPREAD: Duration = Duration::from_secs(10);

    pub fn plan(&self) -> DrainPlan {
        let pace = match (self.batch, self.spread) {
            (Some(percent), _) => Pace::Batches {
                percent,
                interval: self.interval,
            },
            (None, Some(window)) => Pace::Spread(window),
            (None, None) => Pace::Auto {
                max_window: (self.timeout / 3).min(Self::MAX_DEFAULT_SPREAD),
            },
        };
        DrainPlan {
            port: self.port,
            timeout: self.timeout,
            poll_interval: self.poll_interval,
            quiet_period: self.quiet_period,
            close_grace: self.close_grace,
            pace,
            force: self.force,
            accept_grace: self.accept_grace,
            pid: self.pid,
            successor_port: self.successor_port,
            no_connection_close: self.no_connection_close,
            websocket_close: self.websocket_close,
            keep_refusing: self.keep_refusing,
        }
    }
}

/// A `--pid` value: a positive process id that exists now, in drainctl's PID namespace
/// (the one the daemon is told about, too). Checked here so a typo is a usage error
/// naming the option, not a drain that finds no listener of that process.
fn parse_pid(text: &str) -> Result<i32, String> {
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|err| format!("not a process id: {err}"))?;
    if pid <= 0 {
        return Err(format!("{pid} is not a process id (it must be 1 or more)"));
    }
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process {pid} is running"));
    }
    Ok(pid)
}

pub(super) async fn run(args: DrainArgs, route: Route) -> Result<Exit, Failure> {
    let plan = args.plan();
    let mut progress = view::ProgressView::new(plan.port, view::live_progress_wanted());
    let started = std::time::Instant::now();
    let via_daemon = match route {
        Route::Daemon(client) => {
            let cancel = signal::interrupted();
            client
                .drain(&plan, cancel, |p: &Progress| progress.show(p))
                .await
        }
        Route::Standalone => Ok(ViaDaemon::NotThere),
    };
    let plan = match via_daemon {
        // After the daemon went away: with what is left of the time (the pinned
        // refusal it set up is taken over).
        Ok(ViaDaemon::WentAway) => plan.after(started.elapsed()),
        _ => plan,
    };
    let result = match via_daemon {
        Ok(ViaDaemon::Report(report)) => Ok(*report),
        Ok(ViaDaemon::Stopped(daemon_did)) => {
            stopped_by_signal(&daemon_did);
            progress.finish();
            return Ok(signal::exit_code());
        }
        Ok(ViaDaemon::NotThere | ViaDaemon::WentAway) => {
            drain::drain(&plan, signal::interrupted(), |p: &Progress| {
                progress.show(p)
            })
            .await
            .map_err(|err| Failure::of(&err))
        }
        Err(failure) => Err(failure),
    };
    progress.finish();
    let report = result?;
    // The exit code is the drain's outcome whatever happens to the report: a service
    // manager acts on it, and the drain is done either way.
    let printed = view::to_stdout(|out| {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)
        } else {
            view::print_report(&report, out)
        }
    });
    if let Err(err) = printed {
        view::error_line(&format!("cannot print the report on stdout: {err}"));
    }
    Ok(match report.outcome {
        Outcome::Drained => Exit::Drained,
        Outcome::DeadlineReached => Exit::Remaining,
        Outcome::Cancelled => signal::exit_code(),
    })
}

/// SIGTERM or SIGINT ended the drain and the daemon sent no report: drainctl still exits
/// with the signal's code, saying so on stderr (there is no report to print).
fn stopped_by_signal(daemon_did: &str) {
    view::error_line(&format!(
        "stopped by a signal before drain-daemon reported (it {daemon_did}); the daemon ends \
         the drain on its own, as for a client that left"
    ));
}

//! `drainctl`: the command line over the drain library.
//!
//! Parses arguments, sets up logging, runs one command and turns its result into an
//! exit code a service manager can act on ([`Exit`]). It holds no drain logic.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tracing::{debug, info, warn};

mod view;

use crate::{
    control::{self, Client, ErrorKind, Reply, Request},
    drain::{self, Cancel, DrainPlan, DrainReport, Outcome, Pace, Progress},
    duration,
    inventory::{Inventory, SourceKind},
    netns, status, steer,
};

/// Exit codes of `drainctl`, documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The port is drained: nothing of the old listener is left.
    Drained = 0,
    /// The deadline passed with connections still open (listed on stdout).
    Remaining = 1,
    /// Bad arguments (also what clap uses).
    Usage = 2,
    /// The machine or the target is not as required: no listener, not root, kernel
    /// without sk_lookup.
    Environment = 3,
    /// Anything else: an unexpected system error (the message says which call).
    Failure = 4,
    /// Interrupted by SIGINT before the drain finished (128 + 2, as shells report it).
    Interrupted = 130,
    /// Stopped by SIGTERM before the drain finished (128 + 15).
    Terminated = 143,
}

/// Set when SIGTERM (not SIGINT) ended a drain early: the exit code tells them apart.
static TERMINATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Exit {
    /// The class of a failed command as `--json` names it (`error.kind`, README "Exit
    /// codes"); `None` for the codes that are a drain's outcome, not an error.
    pub fn error_kind(self) -> Option<&'static str> {
        match self {
            Exit::Usage => Some("usage"),
            Exit::Environment => Some("environment"),
            Exit::Failure => Some("failure"),
            Exit::Drained | Exit::Remaining | Exit::Interrupted | Exit::Terminated => None,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "drainctl",
    version,
    about = "Drain a TCP port without losing requests: refuse new connections, close idle \
             keep-alive ones gracefully, let in-flight requests finish"
)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The drain-daemon control socket. Without this option drainctl uses the daemon at
    /// /run/drain-daemon/control.sock if one answers and drains on its own otherwise;
    /// with it, an unreachable daemon is an error.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "standalone"
    )]
    pub daemon_socket: Option<PathBuf>,
    /// Never use drain-daemon: drain from this process.
    #[arg(long, global = true)]
    pub standalone: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drain a port: refuse new connections, close idle ones, wait for the rest.
    ///
    /// Exits 0 when nothing of the listener is left, 1 at the deadline with connections
    /// still open. New connections stay refused after exit until the listener closes.
    Drain(DrainArgs),
    /// Stop refusing new connections to a port (undo a drain whose listener stays).
    Release(ReleaseArgs),
    /// Show each port's listeners, connections (idle / in flight) and drain.
    Status(StatusArgs),
}

impl Command {
    /// Whether the command prints JSON (`--json`): its errors are then JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Drain(args) => args.json,
            Command::Release(args) => args.json,
            Command::Status(args) => args.json,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this port (default: every port with a TCP listener).
    #[arg(short, long, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this local address (listeners bound to it or to the wildcard address).
    #[arg(short, long, requires = "port")]
    pub address: Option<std::net::IpAddr>,
    /// Print one JSON object (the stable format scripts use; see docs/report.md).
    #[arg(long)]
    pub json: bool,
    /// Where to read sockets from (default: sock_diag, or /proc/net/tcp where it fails).
    #[arg(long, value_enum)]
    pub inventory_source: Option<InventorySource>,
    /// Judge connections idle after this long without data (as `drain` does).
    #[arg(long, default_value = "1s", allow_hyphen_values = true, value_name = "DUR",
          value_parser = |text: &str| duration::QUIET_PERIOD.parse(text))]
    pub quiet_period: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InventorySource {
    SockDiag,
    Procfs,
}

impl From<InventorySource> for SourceKind {
    fn from(source: InventorySource) -> Self {
        match source {
            InventorySource::SockDiag => SourceKind::SockDiag,
            InventorySource::Procfs => SourceKind::Procfs,
        }
    }
}

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

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The TCP port to stop refusing (1-65535).
    #[arg(short, long, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Print the result as one JSON object on stdout: `{"port":P,"released":BOOL}`.
    #[arg(long)]
    pub json: bool,
}

/// `drainctl`'s command line as clap sees it: the package's man pages and shell
/// completions are generated from it, so they cannot drift from the real options.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
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

/// The one line a usage error is shown as: clap's message without its usage and help
/// blocks, but with its tip (a similar option that exists).
fn usage_error_line(err: &clap::Error) -> String {
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required: drain, release or status (drainctl --help says more)"
            .into();
    }
    let rendered = err.render().to_string();
    let mut blocks = rendered.split("\n\n").map(|block| {
        block
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut line = blocks.next().unwrap_or_default();
    if let Some(stripped) = line.strip_prefix("error: ") {
        line = stripped.to_string();
    }
    for tip in blocks.filter(|block| block.starts_with("tip: ")) {
        line.push_str("; ");
        line.push_str(&tip);
    }
    line
}

/// Whether a command line that clap refused asked for JSON: its usage error is then
/// JSON too. Options end at `--`; a `--json` after it is an operand.
fn wants_json(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json")
}

/// Entry point of the `drainctl` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    let json = wants_json(std::env::args_os());
                    Failure::usage(usage_error_line(&err)).show(json)
                }
            };
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let json = cli.command.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let message = format!("cannot start the async runtime: {err}");
            return Failure::new(Exit::Failure, message).show(json);
        }
    };
    let result = runtime.block_on(run(cli));
    // A scan left stuck past the drain's deadline (a blocking thread) must not hold the
    // exit: the report is out.
    runtime.shutdown_background();
    match result {
        Ok(exit) => exit.into(),
        Err(failure) => failure.show(json),
    }
}

/// Runs the command; a failure is shown by the caller, once, as `--json` asks.
async fn run(cli: Cli) -> Result<Exit, Failure> {
    let route = || Route::choose(cli.daemon_socket.as_deref(), cli.standalone);
    match cli.command {
        Command::Drain(args) => {
            // What clap cannot check alone (--successor-port against --port), before
            // anything is set up; the daemon checks the same.
            duration::check_plan(&args.plan()).map_err(|err| Failure::usage(err.to_string()))?;
            run_drain(args, route().await?).await
        }
        Command::Release(args) => run_release(args, route().await?).await,
        // Status only reads the kernel's tables: no daemon involved.
        Command::Status(args) => run_status(args),
    }
}

/// Who does the work: the daemon, or this process.
enum Route {
    Daemon(Client),
    Standalone,
}

impl Route {
    async fn choose(daemon_socket: Option<&Path>, standalone: bool) -> Result<Route, Failure> {
        if standalone {
            return Ok(Route::Standalone);
        }
        let path = daemon_socket.unwrap_or(Path::new(control::DEFAULT_SOCKET));
        match Client::connect(path).await {
            Ok(client) => {
                debug!(socket = %path.display(), "using drain-daemon");
                Ok(Route::Daemon(client))
            }
            Err(err) if daemon_socket.is_some() => Err(Failure::new(
                Exit::Environment,
                format!("{err}: is drain-daemon running? (--standalone drains without it)"),
            )),
            Err(_) => {
                debug!(socket = %path.display(), "no drain-daemon answers; draining standalone");
                Ok(Route::Standalone)
            }
        }
    }
}

/// A failed command: its exit code and a one-line message.
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn new(exit: Exit, message: String) -> Self {
        Failure { exit, message }
    }

    fn usage(message: String) -> Self {
        Failure::new(Exit::Usage, message)
    }

    /// Says what failed (stderr, and stdout as JSON when `json`) and gives the exit code.
    fn show(&self, json: bool) -> ExitCode {
        let kind = self.exit.error_kind().unwrap_or("failure");
        view::error(&self.message, kind, self.exit as u8, json);
        self.exit.into()
    }

    fn from_kind(kind: ErrorKind, message: String) -> Self {
        let exit = match kind {
            ErrorKind::Environment => Exit::Environment,
            ErrorKind::Failure | ErrorKind::OtherNamespace | ErrorKind::Stopping => Exit::Failure,
        };
        Failure { exit, message }
    }

    fn daemon(err: control::ControlError) -> Self {
        Failure {
            exit: Exit::Failure,
            message: err.to_string(),
        }
    }
}

async fn run_drain(args: DrainArgs, route: Route) -> Result<Exit, Failure> {
    let plan = args.plan();
    let mut progress = view::ProgressView::new(plan.port, view::live_progress_wanted());
    let started = std::time::Instant::now();
    let via_daemon = match route {
        Route::Daemon(client) => drain_via_daemon(client, &plan, &mut progress).await,
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
        Ok(ViaDaemon::Stopped(exit)) => {
            progress.finish();
            return Ok(exit);
        }
        Ok(ViaDaemon::NotThere | ViaDaemon::WentAway) => {
            drain::drain(&plan, interrupted(), |p: &Progress| progress.show(p))
                .await
                .map_err(|err| Failure {
                    exit: if err.is_environment() {
                        Exit::Environment
                    } else {
                        Exit::Failure
                    },
                    message: err.to_string(),
                })
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
        Outcome::Cancelled => signal_exit(),
    })
}

/// How a drain through the daemon ended.
enum ViaDaemon {
    Report(Box<DrainReport>),
    /// No daemon serves this drain (none, another network namespace, stopping): the
    /// caller drains standalone.
    NotThere,
    /// The daemon went away midway: the caller carries on standalone.
    WentAway,
    /// A signal ended the drain and the daemon did not report in time: drainctl exits
    /// with this code and no report.
    Stopped(Exit),
}

/// How long past the drain's own end (accept grace, timeout, close grace) drainctl waits
/// for the daemon's report: the daemon reports within about 2 s of it.
const DAEMON_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);
/// How long drainctl, asked to stop by a signal, waits for the daemon to confirm: the
/// signal ends drainctl whatever the daemon does.
const CANCEL_REPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the drain in the daemon, for as long as the drain itself at most
/// ([`DAEMON_MARGIN`]): a daemon that stops answering does not hold drainctl, nor the
/// service stop that runs it.
async fn drain_via_daemon(
    mut client: Client,
    plan: &DrainPlan,
    progress: &mut view::ProgressView,
) -> Result<ViaDaemon, Failure> {
    let netns_inode = netns::current_inode().map_err(|err| Failure {
        exit: Exit::Failure,
        message: format!("reading /proc/self/ns/net: {err}"),
    })?;
    let request = Request::Drain {
        plan: plan.clone(),
        netns_inode,
    };
    let bound = plan.accept_grace + plan.timeout + plan.close_grace + DAEMON_MARGIN;
    let give_up = tokio::time::sleep(bound);
    tokio::pin!(give_up);
    let cancel = interrupted();
    tokio::pin!(cancel);
    client.send(&request).await.map_err(Failure::daemon)?;
    let mut cancelled = false;
    loop {
        let reply = tokio::select! {
            reply = client.next_reply() => match reply {
                Ok(reply) => reply,
                Err(_) if cancelled => return Ok(stopped_by_signal("closed the connection")),
                // The daemon was killed or crashed midway (a stop lets drains finish):
                // the service's stop still needs its drain.
                Err(err) => {
                    warn!("drain-daemon went away in the middle of the drain ({err}); carrying on standalone (what it closed is not in this report)");
                    return Ok(ViaDaemon::WentAway);
                }
            },
            mode = &mut cancel, if !cancelled => {
                cancelled = true;
                give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_REPLY_WAIT);
                ask_to_cancel(&mut client, mode).await;
                continue;
            }
            () = &mut give_up => {
                if cancelled {
                    return Ok(stopped_by_signal(&format!(
                        "did not confirm the cancel within {CANCEL_REPLY_WAIT:?}"
                    )));
                }
                ask_to_cancel(&mut client, Cancel::Stop).await;
                return Err(Failure {
                    exit: Exit::Failure,
                    message: format!(
                        "drain-daemon did not report within {bound:?} (the drain's accept grace, \
                         timeout and close grace, and {DAEMON_MARGIN:?}): asked it to stop; \
                         check its log (journalctl -u drain-daemon)"
                    ),
                });
            }
        };
        match reply {
            Reply::Progress(update) => progress.show(&update),
            Reply::Report(report) => return Ok(ViaDaemon::Report(Box::new(report))),
            Reply::Error {
                kind: ErrorKind::OtherNamespace | ErrorKind::Stopping,
                message,
            } => {
                info!("{message}; draining standalone");
                return Ok(ViaDaemon::NotThere);
            }
            Reply::Error { kind, message } => return Err(Failure::from_kind(kind, message)),
            Reply::Released { .. } => {
                return Err(Failure {
                    exit: Exit::Failure,
                    message: "drain-daemon answered a drain with a release".into(),
                })
            }
        }
    }
}

/// Sends the cancel line, for [`CANCEL_REPLY_WAIT`] at most: a daemon that does not read
/// it still sees the connection close when drainctl exits, which cancels the drain too.
async fn ask_to_cancel(client: &mut Client, mode: Cancel) {
    let cancel = Request::Cancel {
        abort: mode == Cancel::Abort,
    };
    if let Ok(Err(err)) = tokio::time::timeout(CANCEL_REPLY_WAIT, client.send(&cancel)).await {
        debug!("sending the cancel to drain-daemon: {err}");
    }
}

/// SIGTERM or SIGINT ended the drain and the daemon sent no report: drainctl still exits
/// with the signal's code, saying so on stderr (there is no report to print).
fn stopped_by_signal(daemon_did: &str) -> ViaDaemon {
    view::error_line(&format!(
        "stopped by a signal before drain-daemon reported (it {daemon_did}); the daemon ends \
         the drain on its own, as for a client that left"
    ));
    ViaDaemon::Stopped(signal_exit())
}

/// The exit code of a drain a signal ended.
fn signal_exit() -> Exit {
    if TERMINATED.load(std::sync::atomic::Ordering::Relaxed) {
        Exit::Terminated
    } else {
        Exit::Interrupted
    }
}

async fn run_release(args: ReleaseArgs, route: Route) -> Result<Exit, Failure> {
    let released = match route {
        Route::Daemon(mut client) => release_via_daemon(&mut client, args.port).await,
        Route::Standalone => Ok(None),
    };
    let released = match released {
        Ok(Some(released)) => Ok(released),
        Ok(None) if !nix::unistd::geteuid().is_root() => Err(Failure {
            exit: Exit::Environment,
            message: "releasing a drain needs root: run drainctl as root".into(),
        }),
        Ok(None) => steer::release(args.port).map_err(|err| Failure {
            exit: if err.is_environment() {
                Exit::Environment
            } else {
                Exit::Failure
            },
            message: err.to_string(),
        }),
        Err(failure) => Err(failure),
    };
    let released = released?;
    let port = args.port;
    let printed = view::to_stdout(|out| match (args.json, released) {
        (true, _) => writeln!(out, r#"{{"port":{port},"released":{released}}}"#),
        (false, true) => writeln!(out, "port {port}: new connections are accepted again"),
        (false, false) => writeln!(
            out,
            "port {port}: no drain to release in this network namespace"
        ),
    });
    if let Err(err) = printed {
        view::error_line(&format!("cannot print the result on stdout: {err}"));
    }
    Ok(Exit::Drained)
}

/// `Ok(None)`: the daemon serves another network namespace.
async fn release_via_daemon(client: &mut Client, port: u16) -> Result<Option<bool>, Failure> {
    let netns_inode = netns::current_inode().map_err(|err| Failure {
        exit: Exit::Failure,
        message: format!("reading /proc/self/ns/net: {err}"),
    })?;
    client
        .send(&Request::Release { port, netns_inode })
        .await
        .map_err(Failure::daemon)?;
    // A release is one map lookup and an unpin: a daemon silent for this long is stuck.
    let reply = tokio::time::timeout(2 * DAEMON_MARGIN, client.next_reply())
        .await
        .map_err(|_| Failure {
            exit: Exit::Failure,
            message: format!(
                "drain-daemon did not answer the release within {:?}: check its log (journalctl -u drain-daemon)",
                2 * DAEMON_MARGIN
            ),
        })?;
    match reply.map_err(Failure::daemon)? {
        Reply::Released { released } => Ok(Some(released)),
        Reply::Error {
            kind: ErrorKind::OtherNamespace | ErrorKind::Stopping,
            ..
        } => Ok(None),
        Reply::Error { kind, message } => Err(Failure::from_kind(kind, message)),
        other => Err(Failure {
            exit: Exit::Failure,
            message: format!("drain-daemon answered a release with {other:?}"),
        }),
    }
}

fn run_status(args: StatusArgs) -> Result<Exit, Failure> {
    let status = Inventory::with_source(args.quiet_period, args.inventory_source.map(Into::into))
        .map(|inventory| inventory.with_connection_owners(false))
        .and_then(|mut inventory| status::status(&mut inventory, args.port, args.address));
    let status = status.map_err(|err| Failure::new(Exit::Failure, err.to_string()))?;
    // A reader that stopped early (`| head -1`) got what it wanted: exit 0, quietly.
    let printed = view::to_stdout(|out| {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&status)?)
        } else {
            view::print_status(&status, out)
        }
    });
    if let Err(err) = printed {
        // Not a JSON error: the status went to that stdout already, in part or not at all.
        view::error_line(&format!("cannot print the status on stdout: {err}"));
        return Ok(Exit::Failure);
    }
    if !nix::unistd::geteuid().is_root() {
        warn!("not root: owners in other users' processes are not shown");
    }
    Ok(Exit::Drained)
}

/// Resolves when the drain should stop early: SIGINT (a person aborting: stop refusing)
/// or SIGTERM (the service manager stopping us: keep refusing until the listener closes).
/// The handlers are installed when this is called, not when the future is first polled,
/// so a signal right after the steering is in place is not lost.
fn interrupted() -> impl std::future::Future<Output = Cancel> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = signal(SignalKind::interrupt()).and_then(|interrupt| {
        signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
    });
    async move {
        let Ok((mut interrupt, mut terminate)) = handlers else {
            warn!("cannot install signal handlers; SIGINT and SIGTERM end drainctl at once");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => Cancel::Abort,
            _ = terminate.recv() => {
                TERMINATED.store(true, std::sync::atomic::Ordering::Relaxed);
                Cancel::Stop
            }
        }
    }
}

pub fn init_logging(verbose: u8, quiet: bool) {
    init_logging_to(verbose, quiet, None);
}

/// Like [`init_logging`], but to journald through `journal` when given (the daemon under
/// systemd: [`crate::journal`]).
pub fn init_logging_to(verbose: u8, quiet: bool, journal: Option<tracing_journald::Layer>) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` also routes `log` records (aya-log's eBPF records) into tracing.
    let _ = match journal {
        Some(journal) => registry.with(journal).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(view::log_writer)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("drainctl").chain(args.iter().copied()))
    }

    #[test]
    fn drain_defaults() {
        let cli = parse(&["drain", "--port", "8080"]).unwrap();
        let Command::Drain(args) = cli.command else {
            panic!("expected drain")
        };
        assert_eq!(args.port, 8080);
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert_eq!(args.poll_interval, Duration::from_millis(100));
        assert_eq!(args.quiet_period, Duration::from_secs(1));
        assert_eq!(args.close_grace, Duration::from_secs(2));
        let plan = args.plan();
        assert_eq!(
            plan.pace,
            Pace::Auto {
                max_window: Duration::from_secs(10)
            }
        );
        assert!(!plan.force);
        assert_eq!(plan.accept_grace, Duration::ZERO);
        assert_eq!(plan.keep_refusing, crate::drain::DEFAULT_KEEP_REFUSING);
        assert!(!args.json);
    }

    #[test]
    fn drain_options() {
        let cli = parse(&["drain", "-p", "443", "--timeout", "2m", "--json", "-v"]).unwrap();
        assert_eq!(cli.verbose, 1);
        let Command::Drain(args) = cli.command else {
            panic!("expected drain")
        };
        assert_eq!(
            (args.port, args.timeout, args.json),
            (443, Duration::from_secs(120), true)
        );
    }

    #[test]
    fn pacing_options() {
        let drain_args = |args: &[&str]| match parse(args).unwrap().command {
            Command::Drain(args) => args,
            other => panic!("expected drain, got {other:?}"),
        };
        let short = drain_args(&["drain", "-p", "80", "--timeout", "6s"]);
        assert_eq!(
            short.plan().pace,
            Pace::Auto {
                max_window: Duration::from_secs(2)
            }
        );
        let spread = drain_args(&["drain", "-p", "80", "--spread", "0s", "--force"]);
        assert_eq!(spread.plan().pace, Pace::Spread(Duration::ZERO));
        assert!(spread.plan().force);
        let batches = drain_args(&["drain", "-p", "80", "--batch", "25", "--interval", "200ms"]);
        assert_eq!(
            batches.plan().pace,
            Pace::Batches {
                percent: 25,
                interval: Duration::from_millis(200)
            }
        );
        for bad in [
            &["drain", "-p", "80", "--batch", "0"][..],
            &["drain", "-p", "80", "--batch", "101"],
            &["drain", "-p", "80", "--batch", "10", "--spread", "1s"],
            &["drain", "-p", "80", "--interval", "1s"],
        ] {
            assert_eq!(
                parse(bad).unwrap_err().exit_code(),
                Exit::Usage as i32,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ports_out_of_range_are_usage_errors() {
        // "-1" reaches the range check (allow_hyphen_values) instead of being taken for
        // an option, so the error names --port.
        for bad in ["0", "65536", "http", "-1"] {
            let err = parse(&["drain", "--port", bad]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "port {bad}"
            );
            assert_eq!(err.exit_code(), Exit::Usage as i32);
        }
        assert_eq!(
            parse(&["drain"]).unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn json_is_wanted_from_a_refused_command_line_only_before_the_operands() {
        let wants = |args: &[&str]| {
            wants_json(
                std::iter::once("drainctl")
                    .chain(args.iter().copied())
                    .map(Into::into),
            )
        };
        assert!(wants(&["drain", "--port", "0", "--json"]));
        assert!(wants(&["status", "--json", "--bogus"]));
        assert!(!wants(&["drain", "--port", "0"]));
        assert!(!wants(&["drain", "--", "--json"]));
        assert!(!wants(&["--jsonx"]));
    }

    #[test]
    fn bad_timeout_is_a_usage_error() {
        let err = parse(&["drain", "--port", "80", "--timeout", "soon"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}

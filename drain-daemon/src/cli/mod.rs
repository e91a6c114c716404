//! `drainctl`: the command line over the drain library.
//!
//! Parses arguments, sets up logging, runs one command and turns its result into an
//! exit code a service manager can act on ([`Exit`]). Each subcommand is a file of its
//! own (`drain.rs`, `release.rs`, `status.rs`) that ends in a library call; what they
//! show people is `view.rs`, the signals that stop a drain `signal.rs`. It holds no drain logic, and talks to the daemon only through
//! [`crate::control::client`].

mod drain;
mod release;
mod signal;
mod status;
#[cfg(test)]
mod tests;
mod view;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use tracing::debug;

pub use self::{
    drain::DrainArgs,
    release::ReleaseArgs,
    status::{InventorySource, StatusArgs},
};
use crate::{
    app::{logging, Exit, Failure},
    control::{self, Client},
    duration,
};

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

/// `drainctl`'s command line as clap sees it: the package's man pages and shell
/// completions are generated from it, so they cannot drift from the real options.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

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
                    show(&Failure::usage(usage_error_line(&err)), json)
                }
            };
        }
    };
    logging::init(cli.verbose, cli.quiet, view::log_writer);
    let json = cli.command.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let message = format!("cannot start the async runtime: {err}");
            return show(&Failure::new(Exit::Failure, message), json);
        }
    };
    let result = runtime.block_on(run(cli));
    // A scan left stuck past the drain's deadline (a blocking thread) must not hold the
    // exit: the report is out.
    runtime.shutdown_background();
    match result {
        Ok(exit) => exit.into(),
        Err(failure) => show(&failure, json),
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
            drain::run(args, route().await?).await
        }
        Command::Release(args) => release::run(args, route().await?).await,
        // Status only reads the kernel's tables: no daemon involved.
        Command::Status(args) => status::run(args),
    }
}

/// Who does the work: the daemon, or this process.
pub(super) enum Route {
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

/// Says what failed (stderr, and stdout as JSON when `json`) and gives the exit code.
fn show(failure: &Failure, json: bool) -> ExitCode {
    let kind = failure.exit.error_kind().unwrap_or("failure");
    view::error(&failure.message, kind, failure.exit as u8, json);
    failure.exit.into()
}

//! `drainctl status`: each port's listeners, connections and drain. It only reads the
//! kernel's tables, so no daemon is involved.

use std::time::Duration;

use tracing::warn;

use super::view;
use crate::{
    app::{Exit, Failure},
    duration,
    inventory::{Inventory, SourceKind},
    status,
};

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

pub(super) fn run(args: StatusArgs) -> Result<Exit, Failure> {
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

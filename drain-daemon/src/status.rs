//! `drainctl status`: what each port's listeners hold now, and any drain on the port.
//!
//! One [`Status`] value feeds both the human table and the JSON output, so scripts and
//! people see the same facts. The JSON shape is documented in docs/report.md and stable:
//! fields are only ever added.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{
    announce::{self, Phase},
    inventory::{Inventory, InventoryError, PortInventory, SourceKind},
    netns, steer,
};

/// The state of the ports of this network namespace.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Where the sockets were read from; `procfs` means no connection could be judged idle.
    pub source: SourceKind,
    pub ports: Vec<PortStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortStatus {
    pub port: u16,
    pub listeners: Vec<ListenerStatus>,
    pub connections: ConnectionCounts,
    /// New connections to the port are refused by a drain (pinned, listener still open).
    pub refusing_new_connections: bool,
    /// The last drain of one of the port's current listeners, if its record is there.
    pub drain: Option<DrainStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub address: SocketAddr,
    /// The kernel's socket cookie (`null` from procfs).
    pub cookie: Option<u64>,
    /// Connections completed by the kernel, not yet accepted by the server.
    pub accept_queue: u32,
    /// The listen backlog (`null` from procfs).
    pub accept_queue_limit: Option<u32>,
    pub owners: Vec<Owner>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub command: String,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub total: usize,
    pub idle: usize,
    pub in_flight: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainStatus {
    pub pid: u32,
    /// Whether the process running (or that ran) the drain is alive.
    pub running: bool,
    pub phase: Phase,
    pub elapsed_ms: u64,
    pub timeout_ms: u64,
    pub closed: u64,
    /// New connections the drain's eBPF program refused (RST) so far.
    pub refused: u64,
    /// New connections it handed to a successor listener so far.
    #[serde(default)]
    pub steered: u64,
}

/// The status of `port` (or of every listening port), limited to one local address when
/// `address` is given.
pub fn status(
    inventory: &mut Inventory,
    port: Option<u16>,
    address: Option<IpAddr>,
) -> Result<Status, InventoryError> {
    let ports = match port {
        Some(port) => vec![port],
        None => inventory.listening_ports()?,
    };
    let netns = netns::Identity::current().ok();
    let ports = ports
        .into_iter()
        .map(|port| {
            let scanned = inventory.scan_address(port, address)?;
            let listener_inodes: Vec<u64> =
                scanned.listeners.iter().map(|l| l.socket.inode).collect();
            let drain = netns
                .and_then(|netns| announce::read(&netns, port))
                .filter(|record| record.concerns_any(&listener_inodes));
            Ok(port_status(&scanned, drain, inventory.source()))
        })
        .collect::<Result<_, InventoryError>>()?;
    Ok(Status {
        source: inventory.source(),
        ports,
    })
}

fn port_status(
    scanned: &PortInventory,
    drain: Option<announce::DrainRecord>,
    source: SourceKind,
) -> PortStatus {
    // /proc/net/tcp has neither cookies nor the backlog of a listener.
    let has_diag = source == SourceKind::SockDiag;
    let listeners = scanned
        .listeners
        .iter()
        .map(|listener| ListenerStatus {
            address: listener.socket.id.local,
            cookie: has_diag.then_some(listener.socket.id.cookie),
            accept_queue: listener.accept_queue(),
            accept_queue_limit: has_diag.then_some(listener.accept_queue_limit()),
            owners: listener
                .owners
                .iter()
                .map(|owner| Owner {
                    pid: owner.pid,
                    command: owner.command.clone(),
                })
                .collect(),
        })
        .collect();
    let idle = scanned.idle().count();
    PortStatus {
        port: scanned.port,
        listeners,
        connections: ConnectionCounts {
            total: scanned.connections.len(),
            idle,
            in_flight: scanned.connections.len() - idle,
        },
        refusing_new_connections: steer::is_refusing(scanned.port),
        drain: drain.map(|record| {
            let running = record.phase == Phase::Draining && record.process_alive();
            let until = if running {
                announce::unix_ms()
            } else {
                record.updated_unix_ms
            };
            DrainStatus {
                pid: record.pid,
                running,
                phase: record.phase,
                elapsed_ms: until.saturating_sub(record.started_unix_ms),
                timeout_ms: record.timeout_ms,
                closed: record.closed,
                refused: record.refused,
                steered: record.steered,
            }
        }),
    }
}

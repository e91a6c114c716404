//! Inventory: what a port's listeners still hold, read from the kernel.
//!
//! For one port in the current network namespace: the listening sockets with their
//! owner processes and accept queues, and every connection those processes accepted on
//! it, each classified idle or in flight ([`classify`](mod@classify)). Sockets come from netlink
//! sock_diag with TCP_INFO, filtered by port in the kernel ([`sock_diag`]), or where
//! that is unavailable from `/proc/net/tcp{,6}` ([`procfs`], without TCP_INFO); owners
//! come from procfs ([`owners`]).
//!
//! A connection counts for the port when its owner is one of the listeners' owners, or a
//! process the caller tracks ([`Inventory::track_processes`]: a drain keeps following a
//! server that closed its listener first), or when no visible process holds it. With
//! steering the kernel may hand a connection to port P to another listener (one bound to
//! another port, in another process): such sockets have the local port P too, so
//! ownership, not the port, tells them apart; which connections are a drain's is decided
//! by the drain ([`crate::drain`]). Established sockets no process holds yet are in an
//! accept queue; they are counted by the listener's queue length.

pub mod classify;
pub mod known_owners;
pub mod owners;
pub mod procfs;
pub mod rhythm;
pub mod sock_diag;

use std::{collections::HashSet, io, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tracing::warn;

pub use classify::{classify, Activity, Busy};
pub use owners::SocketOwner;
pub use rhythm::Rhythm;
use sock_diag::{SockDiag, SockDiagError, SocketId, TcpSocket, TcpState, TcpStates};

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    SockDiag(#[from] SockDiagError),
    #[error("reading /proc/net/tcp: {0}")]
    Procfs(#[source] io::Error),
    #[error("{0} is not available from /proc/net/tcp (needs netlink sock_diag)")]
    NeedsSockDiag(&'static str),
}

/// Where the socket lists come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Netlink sock_diag: filtered by port in the kernel, with TCP_INFO and cookies.
    SockDiag,
    /// `/proc/net/tcp{,6}`: no TCP_INFO, so no connection is judged idle.
    Procfs,
}

enum Source {
    SockDiag(SockDiag),
    Procfs,
}

/// A listening socket and the processes holding it.
#[derive(Clone, Debug)]
pub struct Listener {
    pub socket: TcpSocket,
    pub owners: Vec<SocketOwner>,
}

impl Listener {
    /// Connections the kernel completed that no process has accepted yet.
    pub fn accept_queue(&self) -> u32 {
        self.socket.recv_queue
    }

    /// The accept-queue limit (the listen backlog).
    pub fn accept_queue_limit(&self) -> u32 {
        self.socket.send_queue
    }
}

/// An accepted connection of the drained listener.
#[derive(Clone, Debug)]
pub struct Connection {
    pub socket: TcpSocket,
    /// Who holds it; `None` when no visible process does (another PID namespace).
    pub owner: Option<SocketOwner>,
    pub activity: Activity,
}

/// A port's listeners and connections at one instant.
#[derive(Clone, Debug, Default)]
pub struct PortInventory {
    pub port: u16,
    pub listeners: Vec<Listener>,
    pub connections: Vec<Connection>,
    /// Established sockets no process holds yet: the accept queues' members.
    pub queued: Vec<TcpSocket>,
}

impl PortInventory {
    /// Connections completed by the kernel and waiting in the listeners' accept queues.
    pub fn accept_queue(&self) -> u32 {
        self.listeners.iter().map(Listener::accept_queue).sum()
    }

    pub fn idle(&self) -> impl Iterator<Item = &Connection> {
        self.connections.iter().filter(|c| c.activity.is_idle())
    }

    pub fn in_flight(&self) -> impl Iterator<Item = &Connection> {
        self.connections.iter().filter(|c| !c.activity.is_idle())
    }
}

/// States in which a connection still belongs to the server: it may carry a request.
/// Sockets the server (or a drain) already shut down are on their way out.
fn open_states() -> TcpStates {
    TcpStates::ESTABLISHED.with(TcpState::CloseWait)
}

/// Reads port inventories; keeps the netlink socket and the known owner processes
/// between scans so repeated scans of a drain stay cheap.
pub struct Inventory {
    source: Source,
    owners: owners::OwnerFinder,
    quiet_period: Duration,
    connection_owners: bool,
}

impl Inventory {
    /// An inventory judging connections with `quiet_period` ([`classify`](mod@classify), rule 5),
    /// reading sock_diag, or `/proc/net/tcp` (with a warning) where sock_diag fails.
    pub fn new(quiet_period: Duration) -> Result<Self, InventoryError> {
        Self::with_source(quiet_period, None)
    }

    /// Like [`Inventory::new`], with the source forced when `source` is given.
    pub fn with_source(
        quiet_period: Duration,
        source: Option<SourceKind>,
    ) -> Result<Self, InventoryError> {
        let source = match source {
            Some(SourceKind::Procfs) => Source::Procfs,
            Some(SourceKind::SockDiag) => Source::SockDiag(open_sock_diag()?),
            None => match open_sock_diag() {
                Ok(diag) => Source::SockDiag(diag),
                Err(err) => {
                    warn!("netlink sock_diag is unavailable ({err}); reading /proc/net/tcp instead, without TCP_INFO, so no connection is judged idle");
                    Source::Procfs
                }
            },
        };
        Ok(Self {
            source,
            owners: owners::OwnerFinder::default(),
            quiet_period,
            connection_owners: true,
        })
    }

    /// Whether to find the process holding each connection (on by default). A drain
    /// needs it to close connections gracefully; counting them does not, and reading the
    /// owners' descriptors is most of the cost of a scan of a busy port.
    pub fn with_connection_owners(mut self, enabled: bool) -> Self {
        self.connection_owners = enabled;
        self
    }

    /// Reports the connections `pids` hold on the scanned port, whether or not they still
    /// hold a listener there (replaces the previous set).
    pub fn track_processes(&mut self, pids: impl IntoIterator<Item = i32>) {
        self.owners.track(pids);
    }

    /// Which source this inventory reads.
    pub fn source(&self) -> SourceKind {
        match self.source {
            Source::SockDiag(_) => SourceKind::SockDiag,
            Source::Procfs => SourceKind::Procfs,
        }
    }

    /// Every port with a TCP listener in this network namespace, ascending.
    pub fn listening_ports(&mut self) -> Result<Vec<u16>, InventoryError> {
        let listeners = match &mut self.source {
            Source::SockDiag(diag) => diag.dump_all(TcpStates::LISTEN)?,
            Source::Procfs => {
                procfs::read_all(TcpStates::LISTEN).map_err(InventoryError::Procfs)?
            }
        };
        let mut ports: Vec<u16> = listeners.iter().map(|l| l.id.local.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    fn read_port(
        &mut self,
        port: u16,
        states: TcpStates,
    ) -> Result<Vec<TcpSocket>, InventoryError> {
        match &mut self.source {
            Source::SockDiag(diag) => Ok(diag.dump_port(port, states)?),
            Source::Procfs => procfs::read_port(port, states).map_err(InventoryError::Procfs),
        }
    }

    /// The port's listeners and connections now, limited to one local address when
    /// `address` is given (listeners bound to it or to the wildcard address).
    pub fn scan_address(
        &mut self,
        port: u16,
        address: Option<IpAddr>,
    ) -> Result<PortInventory, InventoryError> {
        let mut inventory = self.scan(port)?;
        if let Some(address) = address {
            let address = address.to_canonical();
            inventory.listeners.retain(|listener| {
                let ip = listener.socket.id.local.ip().to_canonical();
                ip == address || ip.is_unspecified()
            });
            inventory
                .connections
                .retain(|c| c.socket.id.local.ip().to_canonical() == address);
        }
        Ok(inventory)
    }

    /// The port's listeners and connections now.
    pub fn scan(&mut self, port: u16) -> Result<PortInventory, InventoryError> {
        let states = open_states().with(TcpState::Listen);
        let sockets = self.read_port(port, states)?;
        let inodes_of = |listening: bool| -> HashSet<u64> {
            sockets
                .iter()
                .filter(|s| s.inode != 0 && (s.state == TcpState::Listen) == listening)
                .map(|s| s.inode)
                .collect()
        };
        let connection_inodes = if self.connection_owners {
            inodes_of(false)
        } else {
            HashSet::new()
        };
        let owners = self.owners.find(&inodes_of(true), &connection_inodes);

        let (listening, accepted): (Vec<_>, Vec<_>) = sockets
            .into_iter()
            .partition(|s| s.state == TcpState::Listen);
        let listeners: Vec<Listener> = listening
            .into_iter()
            .map(|socket| Listener {
                owners: owners.get(&socket.inode).cloned().unwrap_or_default(),
                socket,
            })
            .collect();
        let mut listener_pids: Vec<i32> = listeners
            .iter()
            .flat_map(|l| l.owners.iter().map(|o| o.pid))
            .chain(self.owners.tracked())
            .collect();
        listener_pids.sort_unstable();
        listener_pids.dedup();

        let quiet_period = self.quiet_period;
        let (queued, accepted): (Vec<_>, Vec<_>) = accepted
            .into_iter()
            .partition(|socket| socket.inode == 0 && socket.state == TcpState::Established);
        let connections = accepted
            .into_iter()
            .filter(|socket| socket.inode != 0)
            .filter_map(|socket| {
                let owner = owners
                    .get(&socket.inode)
                    .and_then(|found| found.first().cloned());
                let belongs = owner
                    .as_ref()
                    .is_none_or(|owner| listener_pids.binary_search(&owner.pid).is_ok());
                belongs.then(|| Connection {
                    activity: classify(&socket, quiet_period),
                    owner,
                    socket,
                })
            })
            .collect();
        Ok(PortInventory {
            port,
            listeners,
            connections,
            queued,
        })
    }

    /// Re-reads one connection by its exact identity (4-tuple and cookie): its socket and
    /// activity now, or `None` once it is closed or no longer open.
    pub fn recheck(
        &mut self,
        id: &SocketId,
    ) -> Result<Option<(TcpSocket, Activity)>, InventoryError> {
        let socket = match &mut self.source {
            Source::SockDiag(diag) => diag.get(id)?,
            Source::Procfs => procfs::read_port(id.local.port(), open_states())
                .map_err(InventoryError::Procfs)?
                .into_iter()
                .find(|socket| socket.id.local == id.local && socket.id.remote == id.remote),
        };
        Ok(socket
            .filter(|socket| open_states().contains(socket.state))
            .map(|socket| {
                let activity = classify(&socket, self.quiet_period);
                (socket, activity)
            }))
    }

    /// SOCK_DESTROY one connection (abortive close; the peer gets a RST).
    pub fn destroy(&mut self, id: &SocketId) -> Result<(), InventoryError> {
        match &mut self.source {
            Source::SockDiag(diag) => Ok(diag.destroy(id)?),
            Source::Procfs => Err(InventoryError::NeedsSockDiag("SOCK_DESTROY")),
        }
    }
}

/// Opens sock_diag and checks that TCP dumps work (the netlink family can exist without
/// the inet_diag module).
fn open_sock_diag() -> Result<SockDiag, InventoryError> {
    let mut diag = SockDiag::open()?;
    // Port 0 matches nothing: only the kernel's answer matters.
    diag.dump_port(0, TcpStates::LISTEN)?;
    Ok(diag)
}

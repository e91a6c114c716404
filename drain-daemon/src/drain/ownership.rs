//! Which of a port's sockets are the drain's, and so may be closed.
//!
//! A port can hold more than the drained server: a successor on the same port, a
//! process in another PID namespace, a connection handed to an unrelated process. Closing
//! one of those cuts a service that is not being drained, so the drain acts only on what
//! is provably its own:
//!
//! - **Connections held by an owner of a draining listener**, known by pid *and* start
//!   time (a reused pid is another process). The owners are remembered from the start
//!   and followed after they close their listeners: a server's own graceful stop (nginx's
//!   QUIT, Go's `Shutdown`) closes the listener first and goes on serving, and the drain
//!   is not done while it does. A process that later holds a draining listener (a
//!   reloaded worker) becomes an owner too.
//! - **Sockets in a draining listener's accept queue.** The kernel does not say which
//!   listener queues a socket, and a successor on the same address queues the same kind.
//!   A queued socket counts only when it was queued at the previous scan as well and, in
//!   this scan, no other listener of the port has a queue while the draining ones hold at
//!   least as many: a socket never returns to a queue, so it sat in one queue between the
//!   two sightings, and each listener's queue length is read in between (sock_diag dumps
//!   a family's listeners before its connections).
//!
//! Connections no visible process holds are counted ([`Ownership::unknown_owner`]) and
//! left alone; those of other visible processes (successors) are not the drain's at all.
//! A pod's drain has a scope, its PID namespace: a holder outside it never becomes an
//! owner, so its connections are never closed, even on a draining listener it shares.
//!
//! A successor on another port ([`Ownership::with_successor_port`]) holds the
//! connections handed to it under the drained port's address (the kernel gives an
//! accepted socket the packet's destination), so they show up in the drained port's
//! scan: its owners are not the drain's, and its accept queue counts as another
//! listener's queue.

use std::collections::{hash_map::Entry, BTreeMap, HashMap, HashSet};

use tracing::debug;

use crate::{
    inventory::{
        owners, sock_diag::SocketId, Inventory, InventoryError, Listener, PortInventory,
        SocketOwner,
    },
    pidns::PidNamespace,
};

/// The processes holding a draining listener that are not servers being drained, so the
/// listener stays open after the servers exit: with `tree` (the `--pid` process tree),
/// every holder outside it (a supervisor that handed the listener down); without, the
/// namespace's init beside other holders (systemd's socket activation keeps the socket
/// for the next instance). A refusal keyed on such a listener would outlive the service.
pub(super) fn keepers(draining: &[Listener], tree: Option<&HashSet<i32>>) -> Vec<SocketOwner> {
    let mut keepers = BTreeMap::new();
    for listener in draining {
        for owner in &listener.owners {
            let keeps = match tree {
                Some(tree) => !tree.contains(&owner.pid),
                None => owner.pid == 1 && listener.owners.iter().any(|o| o.pid != 1),
            };
            if keeps {
                keepers.entry(owner.pid).or_insert_with(|| owner.clone());
            }
        }
    }
    keepers.into_values().collect()
}

/// What the drain owns on its port, kept across scans.
pub(super) struct Ownership {
    port: u16,
    /// Socket inodes of the draining listeners.
    listeners: HashSet<u64>,
    /// The draining listeners' owner processes: pid -> start time.
    owners: HashMap<i32, u64>,
    /// The sockets queued at the previous scan.
    queued_before: HashSet<SocketId>,
    /// Cookies of the connections seen with no visible holder.
    unknown_owner: HashSet<u64>,
    /// A pod's drain: only processes of this namespace become owners, whatever else
    /// holds a draining listener.
    scope: Option<PidNamespace>,
    /// The successor port and the inventory reading its listeners (its own, so the
    /// drained port's owner search keeps what it learned between scans).
    successor_port: Option<(u16, Inventory)>,
}

/// One scan of the port, split.
#[derive(Debug)]
pub(super) struct Scan {
    /// Every listener on the port, the drain's and the successors', then those on the
    /// successor port.
    pub(super) listeners: Vec<Listener>,
    /// The drain's listeners, connections and queued sockets.
    pub(super) ours: PortInventory,
}

impl Ownership {
    /// Owns `listeners` (socket inodes) of `scan`'s port and the processes holding them
    /// in `scan`, of `scope` only when given.
    pub(super) fn new(
        scan: &PortInventory,
        listeners: HashSet<u64>,
        scope: Option<PidNamespace>,
    ) -> Self {
        let mut ownership = Ownership {
            port: scan.port,
            listeners,
            owners: HashMap::new(),
            queued_before: HashSet::new(),
            unknown_owner: HashSet::new(),
            scope,
            successor_port: None,
        };
        ownership.learn_owners(scan);
        ownership
    }

    /// Also reads the listeners of `port` (the successor port) at every scan, with
    /// `inventory`.
    pub(super) fn with_successor_port(mut self, port: u16, inventory: Inventory) -> Self {
        self.successor_port = Some((port, inventory));
        self
    }

    /// Socket inodes of the draining listeners.
    pub(super) fn listeners(&self) -> &HashSet<u64> {
        &self.listeners
    }

    /// Whether `pid` is a known owner of a draining listener.
    pub(super) fn owns_process(&self, pid: i32) -> bool {
        self.owners.contains_key(&pid)
    }

    /// How many distinct connections on the port had no visible holder, and were left
    /// alone.
    pub(super) fn unknown_owner(&self) -> u64 {
        self.unknown_owner.len() as u64
    }

    /// Scans the port, the owners' connections included after their listeners closed.
    pub(super) fn scan(&mut self, inventory: &mut Inventory) -> Result<Scan, InventoryError> {
        // The successor port first: a socket queued at two scans of the drained port in a
        // row was queued while this read its queue lengths, so it is not taken for ours.
        let elsewhere = match &mut self.successor_port {
            Some((port, successors)) => successors.scan(*port)?.listeners,
            None => Vec::new(),
        };
        // The successor's processes are read too: the connections handed to it are then
        // known as its own, not counted as held by no visible process.
        let successors = elsewhere
            .iter()
            .flat_map(|l| l.owners.iter().map(|o| o.pid));
        inventory.track_processes(self.owners.keys().copied().chain(successors));
        let everything = inventory.scan(self.port)?;
        let mut listeners = everything.listeners.clone();
        listeners.extend(elsewhere.iter().cloned());
        Ok(Scan {
            listeners,
            ours: self.claim(everything, &elsewhere),
        })
    }

    /// The drain's part of `scan`; `elsewhere` are the successor port's listeners.
    fn claim(&mut self, mut scan: PortInventory, elsewhere: &[Listener]) -> PortInventory {
        // After the scan, so a pid reused before or during it is caught.
        self.owners
            .retain(|&pid, &mut started| owners::start_time(pid) == Some(started));
        self.learn_owners(&scan);

        let (ours, others): (Vec<Listener>, Vec<Listener>) = scan
            .listeners
            .into_iter()
            .partition(|l| self.listeners.contains(&l.socket.inode));
        scan.listeners = ours;
        let queued_now = scan.queued.iter().map(|s| s.id).collect();
        let queued_before = std::mem::replace(&mut self.queued_before, queued_now);
        scan.queued.retain(|s| queued_before.contains(&s.id));
        let only_ours_queue = others
            .iter()
            .chain(elsewhere)
            .all(|l| l.accept_queue() == 0);
        if !only_ours_queue || scan.queued.len() > scan.accept_queue() as usize {
            scan.queued.clear();
        }

        let before = self.unknown_owner.len();
        scan.connections.retain(|c| match &c.owner {
            Some(owner) => self.owners.contains_key(&owner.pid),
            None => {
                self.unknown_owner.insert(c.socket.id.cookie);
                false
            }
        });
        if self.unknown_owner.len() > before {
            debug!(
                port = self.port,
                unknown_owner = self.unknown_owner.len(),
                "connections held by no visible process are left alone"
            );
        }
        scan
    }

    /// Remembers the processes holding a draining listener in `scan`.
    fn learn_owners(&mut self, scan: &PortInventory) {
        let holders = scan
            .listeners
            .iter()
            .filter(|l| self.listeners.contains(&l.socket.inode))
            .flat_map(|l| &l.owners);
        for owner in holders {
            if self.scope.is_some_and(|scope| !scope.contains(owner.pid)) {
                continue;
            }
            if let Entry::Vacant(entry) = self.owners.entry(owner.pid) {
                if let Some(started) = owners::start_time(owner.pid) {
                    entry.insert(started);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::sock_diag::{TcpSocket, TcpState};

    fn listener(holders: &[i32]) -> Listener {
        Listener {
            socket: TcpSocket {
                id: SocketId {
                    local: "127.0.0.1:8080".parse().unwrap(),
                    remote: "0.0.0.0:0".parse().unwrap(),
                    cookie: 1,
                    interface: 0,
                },
                state: TcpState::Listen,
                recv_queue: 0,
                send_queue: 1024,
                inode: 10,
                uid: 0,
                info: None,
            },
            owners: holders
                .iter()
                .map(|&pid| SocketOwner {
                    pid,
                    fd: 3,
                    command: format!("p{pid}"),
                })
                .collect(),
        }
    }

    fn pids(keepers: Vec<SocketOwner>) -> Vec<i32> {
        keepers.into_iter().map(|k| k.pid).collect()
    }

    #[test]
    fn socket_activation_keeps_the_listener_beside_the_server() {
        // systemd (pid 1) holds the socket it handed to the service.
        assert_eq!(pids(keepers(&[listener(&[1, 420])], None)), [1]);
        // A server that is pid 1 of its own namespace (a container) keeps nothing.
        assert!(keepers(&[listener(&[1])], None).is_empty());
        assert!(keepers(&[listener(&[420, 421])], None).is_empty());
    }

    #[test]
    fn with_a_pid_every_holder_outside_its_tree_keeps_the_listener() {
        let tree = HashSet::from([420, 421]);
        assert_eq!(
            pids(keepers(&[listener(&[300, 420, 421])], Some(&tree))),
            [300]
        );
        assert!(keepers(&[listener(&[420, 421])], Some(&tree)).is_empty());
    }
}

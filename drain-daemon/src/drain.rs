//! The drain: from a listener taking traffic to nothing of it left, or a deadline.
//!
//! 1. **Steer**: new connections to the port are refused ([`crate::steer`]) while the
//!    draining listeners live.
//! 2. **Scan** the port ([`crate::inventory`]) every poll interval.
//! 3. **Close** the idle connections ([`crate::close`]); in-flight ones are left to
//!    finish, and closed once idle.
//! 4. **Finish** when no connection of the listener is open and its accept queue is
//!    empty ([`Outcome::Drained`]), or at the deadline ([`Outcome::DeadlineReached`]),
//!    with a [`DrainReport`] of what happened and what remains.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    os::fd::{AsFd as _, OwnedFd},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{
    announce::Announcer,
    close::{close_if_idle, send_fin, CloseMethod, CloseOutcome},
    inventory::{Connection, Inventory, InventoryError, Listener, PortInventory},
    netns,
    pidfd::{self, PidfdError},
    steer::{Persistence, SteerError, Steering},
};

/// What to drain and for how long.
#[derive(Clone, Debug)]
pub struct DrainPlan {
    pub port: u16,
    /// After this, the drain stops and reports what remains.
    pub timeout: Duration,
    /// How often the port is scanned.
    pub poll_interval: Duration,
    /// How long a connection must have moved no data to count as idle.
    pub quiet_period: Duration,
    /// How long a server asked to close an idle connection (it read EOF) may keep it
    /// open before the drain sends the FIN itself.
    pub close_grace: Duration,
}

/// Why a drain could not start or go on. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(
        "draining needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_PTRACE): run drainctl as root"
    )]
    NotRoot,
    #[error("no TCP listener on port {port} in this network namespace: check the port (ss -tlnp 'sport = :{port}')")]
    NoListener { port: u16 },
    #[error("the listener on port {port} is held by no visible process: run drainctl in the server's PID namespace")]
    ListenerOwnerUnknown { port: u16 },
    #[error("cannot take a reference to the listener on port {port}: {source}")]
    BorrowListener {
        port: u16,
        #[source]
        source: PidfdError,
    },
    #[error(transparent)]
    Steer(#[from] SteerError),
    #[error("reading the sockets of the port: {0}")]
    Inventory(#[from] InventoryError),
}

impl DrainError {
    /// True when the machine or the input is at fault (exit code 3), not the tool.
    pub fn is_environment(&self) -> bool {
        match self {
            DrainError::NotRoot
            | DrainError::NoListener { .. }
            | DrainError::ListenerOwnerUnknown { .. }
            | DrainError::BorrowListener { .. } => true,
            DrainError::Steer(err) => matches!(
                err,
                SteerError::PermissionDenied(_)
                    | SteerError::Unsupported(_)
                    | SteerError::TooManyListeners { .. }
            ),
            DrainError::Inventory(_) => false,
        }
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No connection of the listener is open and its accept queue is empty.
    Drained,
    /// The timeout passed with connections still open.
    DeadlineReached,
    /// Interrupted before either.
    Cancelled,
}

/// How a cancelled drain leaves the steering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Stop refusing new connections: the drain was aborted, the service goes on.
    Abort,
    /// Keep refusing until the listener closes: the service is stopping anyway.
    Stop,
}

/// A connection still open when the drain ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remaining {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The TCP state as `ss` names it (ESTAB, CLOSE-WAIT).
    pub state: String,
    /// "idle" or "in flight (why)".
    pub activity: String,
    /// Milliseconds since data last moved either way, from TCP_INFO.
    pub last_data_ms: Option<u32>,
    /// How long the drain has known it: a lower bound of its age, which the kernel does
    /// not report.
    pub tracked_ms: u64,
    pub owner_pid: Option<i32>,
    pub owner_command: Option<String>,
}

/// What a drain did and what it left.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainReport {
    pub port: u16,
    pub outcome: Outcome,
    pub elapsed_ms: u64,
    /// Idle connections closed with a FIN through the owner's socket.
    pub closed_gracefully: u64,
    /// Idle connections closed with SOCK_DESTROY (RST).
    pub closed_abortively: u64,
    /// Connections that closed without the drain closing them (finished requests,
    /// clients leaving).
    pub finished_on_their_own: u64,
    /// New connections refused by the steering program during the drain.
    pub refused_connections: u64,
    /// Connections still waiting in the accept queue at the end.
    pub accept_queue: u32,
    pub remaining: Vec<Remaining>,
    /// Where the refusal of new connections is pinned, if it outlives this process.
    pub steering_pinned_at: Option<String>,
    /// Whether new connections are still refused after the drain returned.
    pub still_refusing: bool,
}

/// One pass's counts, for progress output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub elapsed_ms: u64,
    pub time_left_ms: u64,
    pub idle: usize,
    pub in_flight: usize,
    pub accept_queue: u32,
    pub closed: u64,
    pub refused: u64,
}

/// Runs a drain to its end. `cancel` resolving stops it early; `progress` is called
/// after every pass.
pub async fn drain(
    plan: &DrainPlan,
    cancel: impl Future<Output = Cancel>,
    mut progress: impl FnMut(&Progress),
) -> Result<DrainReport, DrainError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DrainError::NotRoot);
    }
    let port = plan.port;
    let mut inventory = Inventory::new(plan.quiet_period)?;
    let before = inventory.scan(port)?;
    if before.listeners.is_empty() {
        return Err(DrainError::NoListener { port });
    }
    let listener_sockets = borrow_listeners(port, &before.listeners)?;
    let fds: Vec<_> = listener_sockets.iter().map(|fd| fd.as_fd()).collect();
    let mut steering = Steering::refuse(port, &fds)?;
    // Holding the listeners would keep them open after the server closes them.
    drop(fds);
    drop(listener_sockets);
    if let Some(logger) = steering.take_logger() {
        tokio::spawn(forward_ebpf_logs(logger));
    }
    info!(
        port,
        listeners = before.listeners.len(),
        "new connections are refused; draining"
    );

    let mut announcer = netns::current_inode()
        .ok()
        .map(|inode| Announcer::new(inode, port, plan.timeout));
    let started = Instant::now();
    let deadline = started + plan.timeout;
    let mut tally = Tally::default();
    let mut ticker = tokio::time::interval(plan.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(cancel);

    let (outcome, last, cancel_mode) = loop {
        let snapshot = inventory.scan(port)?;
        tally.observe(&snapshot);
        if snapshot.connections.is_empty() && snapshot.accept_queue() == 0 {
            break (Outcome::Drained, snapshot, None);
        }
        let closed_now = close_idle(&mut inventory, &snapshot, &mut tally, plan.close_grace);
        let now = Instant::now();
        let pass = Progress {
            elapsed_ms: (now - started).as_millis() as u64,
            time_left_ms: deadline.saturating_duration_since(now).as_millis() as u64,
            idle: snapshot.idle().count() - closed_now.len(),
            in_flight: snapshot.in_flight().count(),
            accept_queue: snapshot.accept_queue(),
            closed: tally.closed_gracefully + tally.closed_abortively,
            refused: steering.refused_connections(),
        };
        if let Some(announcer) = &mut announcer {
            announcer.progress(&pass);
        }
        progress(&pass);
        if now >= deadline {
            let mut remaining = snapshot;
            remaining
                .connections
                .retain(|c| !closed_now.contains(&c.socket.id.cookie));
            break (Outcome::DeadlineReached, remaining, None);
        }
        tokio::select! {
            _ = ticker.tick() => {}
            mode = &mut cancel => break (Outcome::Cancelled, snapshot, Some(mode)),
        }
    };

    let refused_connections = steering.refused_connections();
    if let Some(announcer) = &mut announcer {
        announcer.finish(outcome, refused_connections);
    }
    let pinned_at = match steering.persistence() {
        Persistence::Pinned(dir) => Some(dir.display().to_string()),
        Persistence::Process => None,
    };
    let still_refusing = match cancel_mode {
        Some(Cancel::Abort) => {
            if let Err(err) = steering.release() {
                warn!("could not stop refusing new connections: {err}");
            }
            false
        }
        // The refusal lasts beyond this process only when pinned.
        _ => pinned_at.is_some() && steering.open_listeners() > 0,
    };
    Ok(tally.report(
        plan,
        outcome,
        started,
        &last,
        refused_connections,
        pinned_at.filter(|_| still_refusing),
        still_refusing,
    ))
}

/// Duplicates each listening socket from one of its owners.
fn borrow_listeners(port: u16, listeners: &[Listener]) -> Result<Vec<OwnedFd>, DrainError> {
    listeners
        .iter()
        .map(|listener| {
            let mut last_error = None;
            for owner in &listener.owners {
                match pidfd::duplicate_socket(owner.pid, owner.fd, listener.socket.inode) {
                    Ok(socket) => return Ok(socket),
                    Err(err) => last_error = Some(err),
                }
            }
            Err(match last_error {
                Some(source) => DrainError::BorrowListener { port, source },
                None => DrainError::ListenerOwnerUnknown { port },
            })
        })
        .collect()
}

/// Closes the snapshot's idle connections; returns the cookies of those it closed now.
/// A connection whose server was asked before and still holds it gets its FIN once
/// `close_grace` has passed.
fn close_idle(
    inventory: &mut Inventory,
    snapshot: &PortInventory,
    tally: &mut Tally,
    close_grace: Duration,
) -> HashSet<u64> {
    let mut closed = HashSet::new();
    for connection in snapshot.idle() {
        let cookie = connection.socket.id.cookie;
        if let Some(asked) = tally.asked_at.get(&cookie) {
            if asked.elapsed() >= close_grace && tally.fin_sent.insert(cookie) {
                match send_fin(inventory, connection) {
                    Ok(true) => {
                        info!(peer = %connection.socket.id.remote, "the server kept an idle connection open after EOF; sent its FIN")
                    }
                    Ok(false) => {}
                    Err(err) => {
                        warn!(peer = %connection.socket.id.remote, "cannot send a FIN: {err}")
                    }
                }
            }
            continue;
        }
        match close_if_idle(inventory, connection) {
            Ok(CloseOutcome::Closed(method)) => {
                debug!(peer = %connection.socket.id.remote, ?method, "closed an idle connection");
                tally.closed(connection, method);
                closed.insert(cookie);
            }
            Ok(CloseOutcome::AlreadyClosed) => {}
            Ok(CloseOutcome::BecameBusy(busy)) => {
                debug!(peer = %connection.socket.id.remote, %busy, "a request arrived; leaving it to finish");
            }
            Err(err) => {
                warn!(peer = %connection.socket.id.remote, "cannot close an idle connection: {err}")
            }
        }
    }
    if !closed.is_empty() {
        info!(
            closed = closed.len(),
            in_flight = snapshot.in_flight().count(),
            "closed idle connections"
        );
    }
    closed
}

/// Counts over the whole drain.
#[derive(Default)]
struct Tally {
    first_seen: HashMap<u64, Instant>,
    /// When the drain asked each server to close a connection (by cookie).
    asked_at: HashMap<u64, Instant>,
    /// Connections whose FIN the drain sent after the grace period.
    fin_sent: HashSet<u64>,
    closed_gracefully: u64,
    closed_abortively: u64,
}

impl Tally {
    fn observe(&mut self, snapshot: &PortInventory) {
        let now = Instant::now();
        for connection in &snapshot.connections {
            self.first_seen
                .entry(connection.socket.id.cookie)
                .or_insert(now);
        }
    }

    fn closed(&mut self, connection: &Connection, method: CloseMethod) {
        self.asked_at
            .insert(connection.socket.id.cookie, Instant::now());
        match method {
            CloseMethod::Graceful => self.closed_gracefully += 1,
            CloseMethod::Abortive => self.closed_abortively += 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        plan: &DrainPlan,
        outcome: Outcome,
        started: Instant,
        last: &PortInventory,
        refused_connections: u64,
        steering_pinned_at: Option<String>,
        still_refusing: bool,
    ) -> DrainReport {
        let now = Instant::now();
        let open: HashSet<u64> = last
            .connections
            .iter()
            .map(|c| c.socket.id.cookie)
            .collect();
        let finished_on_their_own = self
            .first_seen
            .keys()
            .filter(|cookie| !open.contains(cookie) && !self.asked_at.contains_key(cookie))
            .count() as u64;
        let remaining = last
            .connections
            .iter()
            .map(|c| Remaining {
                peer: c.socket.id.remote,
                local: c.socket.id.local,
                state: c.socket.state.name().to_string(),
                activity: c.activity.to_string(),
                last_data_ms: c
                    .socket
                    .info
                    .map(|info| info.last_data_recv_ms.min(info.last_data_sent_ms)),
                tracked_ms: self
                    .first_seen
                    .get(&c.socket.id.cookie)
                    .map_or(0, |seen| (now - *seen).as_millis() as u64),
                owner_pid: c.owner.as_ref().map(|o| o.pid),
                owner_command: c.owner.as_ref().map(|o| o.command.clone()),
            })
            .collect();
        DrainReport {
            port: plan.port,
            outcome,
            elapsed_ms: (now - started).as_millis() as u64,
            closed_gracefully: self.closed_gracefully,
            closed_abortively: self.closed_abortively,
            finished_on_their_own,
            refused_connections,
            accept_queue: last.accept_queue(),
            remaining,
            steering_pinned_at,
            still_refusing,
        }
    }
}

/// Carries the program's aya-log records into this process's log (and so into tracing).
/// Polled on a timer: registering the ring buffer with the reactor would need `unsafe`
/// (tokio's `AsyncFd::register`), and a few milliseconds of log latency cost nothing.
async fn forward_ebpf_logs(mut logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        ticker.tick().await;
        logger.flush();
    }
}

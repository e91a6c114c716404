//! The drain: from a listener taking traffic to nothing of it left, or a deadline.
//!
//! 1. **Steer**: new connections to the port are refused ([`crate::steer`]) while the
//!    draining listeners live.
//! 2. **Scan** the port ([`crate::inventory`]) every poll interval, keeping only what is
//!    provably the drain's (`ownership`): a successor's connections, or ones whose
//!    holder is not visible, are never touched.
//! 3. **Close** the idle connections ([`crate::close`]), and the busy ones between a
//!    response and their client's next request (`boundary`), paced by a [`Pace`] so
//!    clients do not all reconnect at once; requests in flight are left to finish.
//! 4. **Finish** when the listener's owners hold no connection on the port (also after
//!    they closed the listener themselves) and its accept queue is empty
//!    ([`Outcome::Drained`]), or at the deadline ([`Outcome::DeadlineReached`];
//!    with `force`, what remains is then closed), with a [`DrainReport`] of what
//!    happened and what remains.
//!
//! An accept grace may come first: new connections are still accepted for a while, for
//! load balancers that have not yet seen the instance leave.

pub(crate) mod blocking;
mod boundary;
mod in_band;
mod ownership;
pub mod report;
pub mod schedule;

use std::{
    collections::HashSet,
    future::Future,
    os::fd::{AsFd as _, OwnedFd},
    time::{Duration, Instant},
};

use blocking::Scanner;
use boundary::Rhythms;
use in_band::InBand;
use ownership::Ownership;
use report::Tally;
pub use report::{DrainReport, ProcessRef, Remaining};
use schedule::CloseSchedule;
pub use schedule::Pace;

use drain_common::MAX_LISTENERS_PER_PORT;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{
    announce::Announcer,
    capabilities,
    close::{self, close_when, send_fin, CloseMethod, CloseOutcome, When},
    close_http::CloseHttp,
    inventory::{owners, Connection, Inventory, InventoryError, Listener, PortInventory, Rhythm},
    netns,
    pidfd::{self, PidfdError},
    pidns::PidNamespace,
    steer::{Expiry, Lasting, Persistence, Size, Sockets, SteerError, Steering},
};

/// What to drain and how. Serialized (durations in milliseconds) as the body of the
/// daemon's drain request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainPlan {
    pub port: u16,
    /// After this, the drain stops and reports what remains.
    #[serde(with = "duration_ms", rename = "timeout_ms")]
    pub timeout: Duration,
    /// How often the port is scanned.
    #[serde(with = "duration_ms", rename = "poll_interval_ms")]
    pub poll_interval: Duration,
    /// How long a connection must have moved no data to count as idle.
    #[serde(with = "duration_ms", rename = "quiet_period_ms")]
    pub quiet_period: Duration,
    /// How long a server asked to close an idle connection (it read EOF) may keep it
    /// open before the drain sends the FIN itself; with `force`, also how long forced
    /// connections get to close before they are reset.
    #[serde(with = "duration_ms", rename = "close_grace_ms")]
    pub close_grace: Duration,
    /// How closes of idle connections are spread out.
    pub pace: Pace,
    /// At the deadline, close what remains (FIN, then RST after `close_grace`).
    pub force: bool,
    /// Keep accepting new connections this long before refusing them (the endpoint
    /// propagation delay of load balancers and Kubernetes).
    #[serde(with = "duration_ms", rename = "accept_grace_ms")]
    pub accept_grace: Duration,
    /// Drain only the listeners held by this process or its descendants; the port's
    /// other listeners are successors. `None`: every listener present at the start
    /// drains, and listeners that appear later are successors.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Hand new connections to the listeners on this other port of the same network
    /// namespace instead of the drained port's other listeners (or a refusal). `None`:
    /// the successors are the drained port's other listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor_port: Option<u16>,
    /// Never write `Connection: close` into HTTP/1.x responses ([`crate::close_http`]):
    /// busy connections are then closed at their boundaries only.
    #[serde(default)]
    pub no_connection_close: bool,
    /// The port's upgraded connections are websockets: a server message at a proven
    /// response boundary that is whole websocket frames gets a close frame (1001) after
    /// it ([`drain_common::inband`]). Off: websockets are closed at their boundaries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket_close: bool,
    /// After the drain, new connections stay refused until the draining listeners close
    /// (the server's stop), for at most this long: the refusal's end when the server
    /// keeps running, also when the drain was killed (see [`crate::steer::Expiry`]).
    #[serde(
        with = "duration_ms",
        rename = "keep_refusing_ms",
        default = "default_keep_refusing"
    )]
    pub keep_refusing: Duration,
}

/// How long new connections stay refused after a drain at most, by default: systemd's
/// default stop timeout (`DefaultTimeoutStopSec=90s`), the longest a service's stop
/// takes before it is killed, and three times Kubernetes' default grace period.
pub const DEFAULT_KEEP_REFUSING: Duration = Duration::from_secs(90);

fn default_keep_refusing() -> Duration {
    DEFAULT_KEEP_REFUSING
}

impl DrainPlan {
    /// The same drain with `spent` of its time gone: the accept grace first, then the
    /// timeout.
    pub fn after(&self, spent: Duration) -> DrainPlan {
        let accept_grace = self.accept_grace.saturating_sub(spent);
        let timeout = self
            .timeout
            .saturating_sub(spent.saturating_sub(self.accept_grace));
        DrainPlan {
            accept_grace,
            timeout,
            ..self.clone()
        }
    }
}

/// Durations as whole milliseconds in JSON.
pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(duration.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Why a drain could not start or go on. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("draining needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_PTRACE, and this process lacks {missing}: run drainctl as root")]
    MissingCapabilities { missing: String },
    #[error("no TCP listener on port {port} in this network namespace: check the port (ss -tlnp 'sport = :{port}')")]
    NoListener { port: u16 },
    #[error("process {pid} holds no TCP listener on port {port}: check the pid (ss -tlnp 'sport = :{port}')")]
    NoListenerOfPid { port: u16, pid: i32 },
    #[error("no TCP listener on port {port} is held by a process of the caller's PID namespace: a pod drains only its own listeners, in its own network namespace (ss -tlnp 'sport = :{port}' in the pod)")]
    NoListenerInScope { port: u16 },
    #[error("the listener on port {port} is held by no visible process: run drainctl in the server's PID namespace")]
    ListenerOwnerUnknown { port: u16 },
    #[error("a TCP listener on port {port} is held by no process of the caller's PID namespace (another container's, or the node's), and the pinned refusal of the port may be its: a pod ends only the refusal of its own listeners; release it through the root control socket, or wait until that listener closes (ss -tlnp 'sport = :{port}')")]
    ReleaseNotInScope { port: u16 },
    #[error("no TCP listener on the successor port {successor_port} in this network namespace: start the new instance first (ss -tlnp 'sport = :{successor_port}')")]
    NoSuccessorListener { successor_port: u16 },
    #[error("no TCP listener on the successor port {successor_port} is held by a process of the caller's PID namespace: a pod hands its new connections only to its own listeners")]
    SuccessorNotInScope { successor_port: u16 },
    #[error("the listener on the successor port {successor_port} is held by {}, which also holds the drained listener on port {port}: the connections handed to it would count as the drain's; start the successor as another process", process_name(*.pid))]
    SuccessorIsDrained {
        port: u16,
        successor_port: u16,
        /// `None` in a reply to a pod that cannot see the process.
        pid: Option<i32>,
    },
    #[error("cannot take a reference to the listener on port {port}: {source}{}", source.hint())]
    BorrowListener {
        port: u16,
        #[source]
        source: PidfdError,
    },
    #[error(transparent)]
    Steer(#[from] SteerError),
    #[error("reading the sockets of the port: {0}")]
    Inventory(#[from] InventoryError),
    #[error("reading the sockets of port {port} failed {attempts} times in a row, last: {source}; {left}")]
    ScanFailed {
        port: u16,
        attempts: u32,
        #[source]
        source: InventoryError,
        /// What the drain leaves behind, for the user to act on.
        left: String,
    },
}

impl DrainError {
    /// True when the machine or the input is at fault (exit code 3), not the tool.
    pub fn is_environment(&self) -> bool {
        match self {
            DrainError::MissingCapabilities { .. }
            | DrainError::NoListener { .. }
            | DrainError::NoListenerOfPid { .. }
            | DrainError::NoListenerInScope { .. }
            | DrainError::ListenerOwnerUnknown { .. }
            | DrainError::ReleaseNotInScope { .. }
            | DrainError::NoSuccessorListener { .. }
            | DrainError::SuccessorIsDrained { .. }
            | DrainError::SuccessorNotInScope { .. }
            | DrainError::BorrowListener { .. } => true,
            DrainError::Steer(err) => err.is_environment(),
            DrainError::Inventory(_) | DrainError::ScanFailed { .. } => false,
        }
    }
}

/// "process PID", or "a process" where the reader may not see it.
fn process_name(pid: Option<i32>) -> String {
    pid.map_or_else(|| "a process".into(), |pid| format!("process {pid}"))
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
    /// New connections handed to a successor so far (absent from older daemons).
    #[serde(default)]
    pub steered: u64,
}

/// Runs a drain to its end. `cancel` resolving stops it early; `progress` is called
/// after every pass.
pub async fn drain(
    plan: &DrainPlan,
    cancel: impl Future<Output = Cancel>,
    progress: impl FnMut(&Progress),
) -> Result<DrainReport, DrainError> {
    drain_scoped(plan, None, cancel, progress).await
}

/// [`drain`], acting only on processes of `scope` when given (a pod's drain): only
/// listeners one of them holds drain, only their connections are closed, and
/// `plan.pid` (the daemon's number of it) must be one of them.
pub async fn drain_scoped(
    plan: &DrainPlan,
    scope: Option<PidNamespace>,
    cancel: impl Future<Output = Cancel>,
    mut progress: impl FnMut(&Progress),
) -> Result<DrainReport, DrainError> {
    // A service manager kills at its own deadline: the timeout bounds the whole run,
    // setup (scans, owner search, loading and attaching the program) included.
    let started = Instant::now();
    let deadline = started + plan.accept_grace + plan.timeout;
    if let Some(missing) = capabilities::own()
        .map(capabilities::missing)
        .filter(|missing| !missing.is_empty())
    {
        return Err(DrainError::MissingCapabilities {
            missing: missing.join(", "),
        });
    }
    let port = plan.port;
    let mut inventory = blocking::run(|| Inventory::new(plan.quiet_period))?;
    tokio::pin!(cancel);
    if !plan.accept_grace.is_zero() {
        // A wrong port is said now, not after the grace (the scan after it checks again).
        if blocking::run(|| inventory.scan(port))?.listeners.is_empty() {
            return Err(DrainError::NoListener { port });
        }
        if let Some(successor_port) = plan.successor_port {
            blocking::run(|| successor_listeners(&mut inventory, successor_port))?;
        }
    }
    // Before the grace: a second drain of the port is told at once that it is busy,
    // rather than hold its place (in the daemon, a connection slot) for a grace that
    // would end in that refusal anyway.
    let port_lock = blocking::run(|| Steering::lock(port))?;
    if !plan.accept_grace.is_zero() {
        info!(port, grace = ?plan.accept_grace, "still accepting new connections for the accept grace");
        tokio::select! {
            () = tokio::time::sleep(plan.accept_grace) => {}
            mode = &mut cancel => {
                let empty = PortInventory { port, ..PortInventory::default() };
                return Ok(Tally::default().report(port, Outcome::Cancelled, started, &empty, 0, None))
                    .inspect(|_| debug!(?mode, "cancelled during the accept grace"));
            }
        }
    }
    // Listeners opened during the grace are drained too.
    let before = blocking::run(|| inventory.scan(port))?;
    let process_tree = |pid| blocking::run(|| owners::process_tree(pid));
    let tree = match (plan.pid, scope) {
        (Some(pid), None) => Some(process_tree(pid)),
        (Some(pid), Some(scope)) => Some(
            process_tree(pid)
                .into_iter()
                .filter(|&member| scope.contains(member))
                .collect(),
        ),
        (None, Some(scope)) => Some(blocking::run(|| scope.members())),
        (None, None) => None,
    };
    let draining = draining_listeners(&before, plan.pid, tree.as_ref())?;
    if draining.is_empty() && scope.is_some() {
        return Err(DrainError::NoListenerInScope { port });
    }
    let mut ownership = Ownership::new(&before, draining, scope);
    let mut successor_candidates = None;
    if let Some(successor_port) = plan.successor_port {
        let (successors, found) = blocking::run(|| {
            let mut successors = Inventory::new(plan.quiet_period)?.with_connection_owners(false);
            let found = successor_listeners(&mut successors, successor_port)?;
            if !found.iter().any(|listener| held_in(scope, listener)) {
                return Err(DrainError::SuccessorNotInScope { successor_port });
            }
            Ok((successors, found))
        })?;
        for listener in &found {
            if let Some(owner) = listener
                .owners
                .iter()
                .find(|o| ownership.owns_process(o.pid))
            {
                return Err(DrainError::SuccessorIsDrained {
                    port,
                    successor_port,
                    pid: Some(owner.pid),
                });
            }
        }
        successor_candidates = Some(found);
        ownership = ownership.with_successor_port(successor_port, successors);
    }
    let successors_are = SuccessorsAre::from_plan(plan, ownership.listeners(), scope);
    let first_successors: Vec<Listener> = choose_successors(
        port,
        successor_candidates.as_deref().unwrap_or(&before.listeners),
        successors_are,
        MAX_LISTENERS_PER_PORT as usize,
        &HashSet::new(),
    )
    .into_iter()
    .cloned()
    .collect();
    let draining: Vec<Listener> = before
        .listeners
        .into_iter()
        .filter(|l| ownership.listeners().contains(&l.socket.inode))
        .collect();
    let keepers = ownership::keepers(&draining, tree.as_ref());
    let lasting = if keepers.is_empty() {
        Lasting::UntilListenersClose
    } else {
        let kept_by: Vec<String> = keepers
            .iter()
            .map(|k| format!("{}/{}", k.pid, k.command))
            .collect();
        warn!(
            port,
            kept_by = kept_by.join(", "),
            "the listener is also held by a process that outlives the drained server: the \
             refusal of new connections lasts only until this drain ends, so the next \
             instance that inherits the listener gets them"
        );
        Lasting::WhileHeld
    };
    // Borrowed only for the attach: holding them would keep them open after the server
    // closes them. The successors already listening are steered to from the start: a
    // new connection refused until the first pass found them would be lost.
    let mut successors = HashSet::new();
    // A drain killed midway leaves the refusal to end by itself this long after the
    // drain would have ended.
    let forcing = if plan.force {
        plan.close_grace
    } else {
        Duration::ZERO
    };
    let ends = Expiry::after(
        deadline.saturating_duration_since(Instant::now()) + forcing + plan.keep_refusing,
    );
    let mut steering = blocking::run(|| {
        let size = Size {
            draining: draining.len(),
            successors: first_successors.len(),
        };
        Steering::refuse(
            port_lock,
            size,
            || {
                let draining = borrow_listeners(port, &draining)?;
                let (borrowed, sockets) = borrow_successors(port, &first_successors);
                successors = borrowed;
                Ok::<_, DrainError>(Sockets {
                    draining,
                    successors: sockets,
                })
            },
            lasting,
            ends,
        )
    })?;
    // Ends with the drain (on every return): a forwarder left running would hold the
    // log ring buffer's descriptor for good, one per drain in a daemon.
    let _log_forwarder = steering
        .take_logger()
        .map(|logger| AbortOnDrop(tokio::spawn(forward_ebpf_logs(logger))));
    if successors.is_empty() {
        info!(
            port,
            listeners = draining.len(),
            "new connections are refused; draining"
        );
    } else {
        info!(
            port,
            listeners = draining.len(),
            successors = successors.len(),
            "new connections go to the successor listeners; draining"
        );
    }

    let mut announcer = netns::Identity::current().ok().map(|netns| {
        let listeners = draining.iter().map(|l| l.socket.inode).collect();
        Announcer::new(netns, port, listeners, plan.timeout)
    });
    let mut schedule = CloseSchedule::new(plan.pace, Instant::now());
    let mut tally = Tally::default();
    let mut rhythms = Rhythms::default();
    let mut in_band = InBand::start(plan.no_connection_close, plan.websocket_close);
    let mut failed_scans = 0;
    let mut scanner = Some(Box::new(Scanner {
        inventory,
        ownership,
    }));
    // The drain's part of the last scan: what remains if the drain ends now.
    let mut last = PortInventory {
        port,
        ..PortInventory::default()
    };

    // A spread's closes are paced within each pass too, over the time to the next one,
    // so slow passes do not turn into bursts; a batch is closed at once.
    let paced_within_pass = match plan.pace {
        Pace::Spread(window) => !window.is_zero(),
        Pace::Auto { .. } => true,
        Pace::Batches { .. } => false,
    };
    let (outcome, cancel_mode) = loop {
        let pass_started = Instant::now();
        // The kernel reads TCP_INFO's "ms ago" stamps at the start of the scan: the owner
        // search that follows can take tens of milliseconds.
        let Some((probe, scanned_at, scanned)) = blocking::scan_by(&mut scanner, deadline).await
        else {
            info!(
                port,
                "the port's scan was still running a second after the deadline (a system call stuck); the report shows the pass before"
            );
            break (Outcome::DeadlineReached, None);
        };
        let scan = match scanned {
            Ok(scan) => {
                failed_scans = 0;
                scan
            }
            // A dump can fail once (ENOBUFS under memory pressure, a timeout on a loaded
            // host) and work at the next pass: the drain goes on, the refusal holds.
            Err(err) if failed_scans + 1 < MAX_FAILED_SCANS && Instant::now() < deadline => {
                failed_scans += 1;
                warn!(
                    port,
                    attempt = failed_scans,
                    "reading the port's sockets failed ({err}); trying again at the next pass"
                );
                tokio::select! {
                    () = tokio::time::sleep(jittered(plan.poll_interval)) => continue,
                    mode = &mut cancel => break (Outcome::Cancelled, Some(mode)),
                }
            }
            Err(source) => {
                if let Some(announcer) = &mut announcer {
                    announcer.fail(
                        steering.refused_connections(),
                        steering.steered_connections(),
                    );
                }
                return Err(DrainError::ScanFailed {
                    port,
                    attempts: failed_scans + 1,
                    source,
                    left: left_behind(&steering, tally.closed_total()),
                });
            }
        };
        blocking::run(|| {
            update_successors(
                &mut steering,
                port,
                &scan.listeners,
                SuccessorsAre::from_plan(plan, probe.ownership.listeners(), scope),
                &mut successors,
            )
        });
        tally.unknown_owner = probe.ownership.unknown_owner();
        let snapshot = scan.ours;
        tally.observe(&snapshot);
        rhythms.observe(&snapshot, scanned_at);
        if let Some(close_http) = in_band.ready().await {
            blocking::run(|| in_band::arm_busy(close_http, &snapshot));
        }
        if snapshot.connections.is_empty() && snapshot.accept_queue() == 0 {
            last = snapshot;
            break (Outcome::Drained, None);
        }
        let now = Instant::now();
        let close_over = paced_within_pass.then_some(plan.poll_interval);
        let closed_now = blocking::run(|| {
            close_due(
                &mut probe.inventory,
                &snapshot,
                &rhythms,
                &mut tally,
                &mut schedule,
                plan.close_grace,
                close_over,
                deadline,
            )
        });
        let still_open = |c: &&Connection| !closed_now.contains(&c.socket.id.cookie);
        let pass = Progress {
            elapsed_ms: (now - started).as_millis() as u64,
            time_left_ms: deadline.saturating_duration_since(now).as_millis() as u64,
            idle: snapshot.idle().filter(still_open).count(),
            in_flight: snapshot.in_flight().filter(still_open).count(),
            accept_queue: snapshot.accept_queue(),
            closed: tally.closed_total(),
            refused: steering.refused_connections(),
            steered: steering.steered_connections(),
        };
        if let Some(announcer) = &mut announcer {
            announcer.progress(&pass);
        }
        progress(&pass);
        last = snapshot;
        if now >= deadline {
            last.connections
                .retain(|c| !closed_now.contains(&c.socket.id.cookie));
            break (Outcome::DeadlineReached, None);
        }
        let next_pass = jittered(plan.poll_interval).saturating_sub(pass_started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(next_pass) => {}
            mode = &mut cancel => break (Outcome::Cancelled, Some(mode)),
        }
    };

    if outcome == Outcome::DeadlineReached && plan.force {
        match scanner.as_deref_mut() {
            Some(probe) => {
                last = blocking::run(|| {
                    force_remaining(
                        &mut probe.inventory,
                        &mut probe.ownership,
                        last,
                        &mut tally,
                        plan.close_grace,
                    )
                })?;
                tally.unknown_owner = probe.ownership.unknown_owner();
            }
            None => warn!(
                port,
                "nothing forced: the port's scan was still running after the deadline"
            ),
        }
    }
    let refused_connections = steering.refused_connections();
    tally.steered = steering.steered_connections();
    tally.connection_close_sent = in_band.loaded().map_or(0, CloseHttp::rewritten);
    tally.websocket_close_sent = in_band.loaded().map_or(0, CloseHttp::websockets_closed);
    tally.client_pauses = last
        .connections
        .iter()
        .filter_map(|c| Some((c.socket.id.cookie, rhythms.of(c)?.pause()?)))
        .collect();
    if let Some(announcer) = &mut announcer {
        announcer.finish(outcome, refused_connections, tally.steered);
    }
    let pinned_at = match steering.persistence() {
        Persistence::Pinned(dir) => Some(dir.display().to_string()),
        Persistence::Held(_) | Persistence::Process => None,
    };
    let held_by = match steering.persistence() {
        Persistence::Held(pid) => Some(*pid),
        Persistence::Pinned(_) | Persistence::Process => None,
    };
    let still_refusing = match cancel_mode {
        Some(Cancel::Abort) => {
            if let Err(err) = steering.release() {
                warn!("could not stop refusing new connections: {err}");
            }
            false
        }
        _ if !steering.persistence().outlives_process() => false,
        _ if steering.open_listeners() > 0 && !plan.keep_refusing.is_zero() => {
            // The server's stop comes next; a server that keeps running gets its new
            // connections again this long after the drain.
            if let Err(err) = steering.end_by(Expiry::after(plan.keep_refusing)) {
                warn!("could not set when the refusal ends: {err}");
            }
            true
        }
        _ => {
            // Every draining listener is gone (the server exited, or its namespace is
            // going), or the refusal is to end with the drain (`--keep-refusing 0s`):
            // the pins refuse nothing any more, and in a deleted namespace nothing would
            // ever reuse them. Removed now rather than at the next sweep.
            if let Err(err) = steering.release() {
                warn!("could not remove the pins of a drain whose listeners are gone: {err}");
            }
            false
        }
    };
    let mut report = tally.report(
        port,
        outcome,
        started,
        &last,
        refused_connections,
        pinned_at.filter(|_| still_refusing),
    );
    report.listener_kept_by = keepers.into_iter().map(ProcessRef::from).collect();
    report.still_refusing = still_refusing;
    if still_refusing {
        report.refusal_held_by = held_by;
        report.refusal_ends_within_ms = plan
            .keep_refusing
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX);
    }
    report.successors = successors.len().try_into().unwrap_or(u32::MAX);
    Ok(report)
}

/// Passes in a row whose scan may fail before the drain gives up (with the default poll
/// interval, about half a second of failures).
const MAX_FAILED_SCANS: u32 = 5;

/// What a drain that failed midway leaves behind, said so the user can act on it.
fn left_behind(steering: &Steering, closed: u64) -> String {
    let refusal = match steering.persistence() {
        Persistence::Pinned(dir) if steering.open_listeners() > 0 => format!(
            "new connections to port {port} stay refused until its listener closes, at most --keep-refusing after the drain's timeout (pinned at {}; `drainctl release --port {port}` ends it now)",
            dir.display(),
            port = steering.port()
        ),
        Persistence::Held(pid) if steering.open_listeners() > 0 => format!(
            "new connections to port {port} stay refused until its listener closes, at most --keep-refusing after the drain's timeout (held by process {pid}; `kill -KILL {pid}` ends it now)",
            port = steering.port()
        ),
        _ => "new connections are accepted again".to_string(),
    };
    format!("{closed} connection(s) were closed before; {refusal}")
}

/// The poll interval with ±20 % jitter, so drains started together (a fleet restarting)
/// do not close connections in lockstep.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// A sleep between two closes costs a system call and a wake-up that is late by tens of
/// microseconds or more: closes due closer together than this are made in groups, one
/// group per tick.
const CLOSE_TICK: Duration = Duration::from_millis(1);

/// Closes the connections the schedule allows now: busy ones found at a boundary
/// first (their margin shrinks while they wait), then idle ones, each group in random
/// order, evenly over `close_over` when given, stopping at `deadline`; returns the
/// cookies of those closed. A connection whose server was asked before and still holds
/// it gets its FIN once `close_grace` has passed and it is idle (outside the schedule: it
/// was counted when asked).
#[allow(clippy::too_many_arguments)]
fn close_due(
    inventory: &mut Inventory,
    snapshot: &PortInventory,
    rhythms: &Rhythms,
    tally: &mut Tally,
    schedule: &mut CloseSchedule,
    close_grace: Duration,
    close_over: Option<Duration>,
    deadline: Instant,
) -> HashSet<u64> {
    let mut at_boundary: Vec<(&Connection, When<'_>)> = snapshot
        .in_flight()
        .filter(|c| !tally.asked_at.contains_key(&c.socket.id.cookie))
        .filter_map(|c| rhythms.at_boundary(c).map(|when| (c, when)))
        .collect();
    fastrand::shuffle(&mut at_boundary);
    let mut idle: Vec<(&Connection, When<'_>)> = Vec::new();
    for connection in snapshot.idle() {
        let cookie = connection.socket.id.cookie;
        match tally.asked_at.get(&cookie) {
            None => idle.push((connection, When::Idle)),
            Some(asked) if asked.elapsed() >= close_grace && tally.fin_sent.insert(cookie) => {
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
            Some(_) => {}
        }
    }
    fastrand::shuffle(&mut idle);
    let mut waiting = at_boundary;
    waiting.extend(idle);
    let allowed = schedule.allowance(Instant::now(), waiting.len());
    let gap = close_over.map_or(Duration::ZERO, |over| over / allowed.max(1) as u32);
    let per_tick = if gap.is_zero() {
        usize::MAX
    } else {
        (CLOSE_TICK.as_nanos() / gap.as_nanos()).max(1) as usize
    };
    let mut closed = HashSet::new();
    for (i, (connection, when)) in waiting.into_iter().take(allowed).enumerate() {
        if i > 0 && i % per_tick == 0 {
            // On a blocking thread ([`blocking::run`]): this sleep holds no worker.
            std::thread::sleep(gap * per_tick as u32);
        }
        if Instant::now() >= deadline {
            break;
        }
        match close_when(inventory, connection, when) {
            Ok(CloseOutcome::Closed(method)) => {
                let at_boundary = matches!(when, When::AtBoundary { .. });
                let client_pause_ms = rhythms
                    .of(connection)
                    .and_then(Rhythm::pause)
                    .map(|pause| pause.as_millis());
                debug!(peer = %connection.socket.id.remote, ?method, at_boundary, ?client_pause_ms, "closed a connection");
                tally.closed(connection, method, at_boundary);
                closed.insert(connection.socket.id.cookie);
            }
            Ok(CloseOutcome::AlreadyClosed) => {}
            Ok(CloseOutcome::BecameBusy(busy)) => {
                debug!(peer = %connection.socket.id.remote, %busy, "a request arrived; leaving it to finish");
            }
            Err(err) => {
                warn!(peer = %connection.socket.id.remote, "cannot close a connection: {err}")
            }
        }
    }
    if !closed.is_empty() {
        let left = |c: &&Connection| !closed.contains(&c.socket.id.cookie);
        info!(
            closed = closed.len(),
            idle_left = snapshot.idle().filter(left).count(),
            in_flight = snapshot.in_flight().filter(left).count(),
            "closed a batch of connections"
        );
    }
    closed
}

/// `--force` at the deadline: shuts down everything of the drain's still open (FIN),
/// waits `close_grace`, then resets what of it is left and its queued connections.
/// Returns the drain's part of the scan after that.
fn force_remaining(
    inventory: &mut Inventory,
    ownership: &mut Ownership,
    remaining: PortInventory,
    tally: &mut Tally,
    close_grace: Duration,
) -> Result<PortInventory, DrainError> {
    for connection in &remaining.connections {
        match close::force(inventory, connection) {
            Ok(CloseMethod::Graceful) => tally.forced_gracefully += 1,
            Ok(CloseMethod::Abortive) => tally.forced_abortively += 1,
            Err(err) => {
                warn!(peer = %connection.socket.id.remote, "cannot force a connection closed: {err}")
            }
        }
    }
    std::thread::sleep(close_grace);
    let after = ownership.scan(inventory)?.ours;
    for id in after
        .connections
        .iter()
        .map(|c| &c.socket.id)
        .chain(after.queued.iter().map(|s| &s.id))
    {
        match close::reset(inventory, id) {
            Ok(true) => tally.forced_abortively += 1,
            Ok(false) => {}
            Err(err) => warn!(peer = %id.remote, "cannot reset a connection: {err}"),
        }
    }
    warn!(
        gracefully = tally.forced_gracefully,
        abortively = tally.forced_abortively,
        "deadline reached: forced the remaining connections closed (--force)"
    );
    Ok(ownership.scan(inventory)?.ours)
}

/// The socket inodes of the listeners to drain: those of `pid`'s process tree, or all.
fn draining_listeners(
    scan: &PortInventory,
    pid: Option<i32>,
    tree: Option<&HashSet<i32>>,
) -> Result<HashSet<u64>, DrainError> {
    let port = scan.port;
    if scan.listeners.is_empty() {
        return Err(DrainError::NoListener { port });
    }
    debug!(?tree, "the process tree whose listeners drain");
    let draining: HashSet<u64> = scan
        .listeners
        .iter()
        .filter(|listener| match tree {
            Some(tree) => listener
                .owners
                .iter()
                .any(|owner| tree.contains(&owner.pid)),
            None => true,
        })
        .map(|listener| listener.socket.inode)
        .collect();
    match pid {
        Some(pid) if draining.is_empty() => Err(DrainError::NoListenerOfPid { port, pid }),
        _ => Ok(draining),
    }
}

/// The listeners of the successor port (`--successor-port`); there must be one.
fn successor_listeners(
    inventory: &mut Inventory,
    successor_port: u16,
) -> Result<Vec<Listener>, DrainError> {
    let listeners = inventory.scan(successor_port)?.listeners;
    if listeners.is_empty() {
        return Err(DrainError::NoSuccessorListener { successor_port });
    }
    Ok(listeners)
}

/// Whether a pod of `scope` may end the pinned refusal of `port` in this network
/// namespace, as it may drain only its own listeners. The pins do not say whose
/// listeners they refuse (a socket in a SOCKHASH cannot be read back), but they are
/// among those open on the port: when each of those is held by a process of `scope`,
/// the refusal is the pod's. Called with the port's lock held, so no drain pins
/// another's listener meanwhile.
pub fn check_release_scope(port: u16, scope: PidNamespace) -> Result<(), DrainError> {
    let scan = Inventory::new(Duration::ZERO)?
        .with_connection_owners(false)
        .scan(port)?;
    if scan
        .listeners
        .iter()
        .all(|listener| held_in(Some(scope), listener))
    {
        Ok(())
    } else {
        Err(DrainError::ReleaseNotInScope { port })
    }
}

/// Whether a process of `scope` holds `listener` (a pod's drain hands its new connections
/// only to a listener of its own); always without a scope.
fn held_in(scope: Option<PidNamespace>, listener: &Listener) -> bool {
    scope.is_none_or(|scope| listener.owners.iter().any(|o| scope.contains(o.pid)))
}

/// Which of a scan's listeners take the new connections.
#[derive(Clone, Copy)]
enum SuccessorsAre<'a> {
    /// The drained port's listeners that are not draining.
    OtherListeners { draining: &'a HashSet<u64> },
    /// Those on this other port (`--successor-port`), held by a process of the scope
    /// when there is one.
    OnPort {
        port: u16,
        scope: Option<PidNamespace>,
    },
}

impl<'a> SuccessorsAre<'a> {
    fn from_plan(
        plan: &DrainPlan,
        draining: &'a HashSet<u64>,
        scope: Option<PidNamespace>,
    ) -> Self {
        match plan.successor_port {
            Some(port) => SuccessorsAre::OnPort { port, scope },
            None => SuccessorsAre::OtherListeners { draining },
        }
    }

    fn include(self, listener: &Listener) -> bool {
        match self {
            SuccessorsAre::OtherListeners { draining } => {
                !draining.contains(&listener.socket.inode)
            }
            SuccessorsAre::OnPort { port, scope } => {
                listener.socket.id.local.port() == port && held_in(scope, listener)
            }
        }
    }
}

/// Hands new connections to the successors when the set of them changed since the last
/// pass: one started after the drain, or one closed.
fn update_successors(
    steering: &mut Steering,
    port: u16,
    listeners: &[Listener],
    successors_are: SuccessorsAre<'_>,
    current: &mut HashSet<u64>,
) {
    let room = steering.successor_room();
    let found = choose_successors(port, listeners, successors_are, room, current);
    let inodes: HashSet<u64> = found.iter().map(|l| l.socket.inode).collect();
    if inodes == *current {
        return;
    }
    let (borrowed, sockets) = borrow_successors(port, found);
    if borrowed == *current {
        return;
    }
    let fds: Vec<_> = sockets.iter().map(|fd| fd.as_fd()).collect();
    match steering.set_successors(&fds) {
        Ok(()) => {
            info!(
                port,
                successors = fds.len(),
                "new connections go to the successor listeners"
            );
            *current = borrowed;
        }
        Err(err) => warn!("cannot hand new connections to the successors: {err}"),
    }
}

/// The listeners of a scan that take the new connections, at most `room`: the same ones
/// (by inode) at every pass when there are more, so the set does not churn (`current`
/// is the set steered to now, to warn only when it changes).
fn choose_successors<'l>(
    port: u16,
    listeners: &'l [Listener],
    successors_are: SuccessorsAre<'_>,
    room: usize,
    current: &HashSet<u64>,
) -> Vec<&'l Listener> {
    let mut found: Vec<&Listener> = listeners
        .iter()
        .filter(|listener| successors_are.include(listener))
        .collect();
    if found.len() > room {
        // Part of the group rather than a refusal of every new connection.
        found.sort_unstable_by_key(|listener| listener.socket.inode);
        if found
            .iter()
            .take(room)
            .map(|l| l.socket.inode)
            .collect::<HashSet<_>>()
            != *current
        {
            warn!(
                port,
                "{} successor listeners, more than the {room} the steering holds: new connections go to {room} of them",
                found.len()
            );
        }
        found.truncate(room);
    }
    found
}

/// Duplicates each successor listener from one of its owners: the inodes of those
/// borrowed, and their descriptors. One that cannot be borrowed now (its owner not yet
/// visible, a process starting, or closed since the scan) is left out, to be tried again
/// at the next pass.
fn borrow_successors<'l>(
    port: u16,
    successors: impl IntoIterator<Item = &'l Listener>,
) -> (HashSet<u64>, Vec<OwnedFd>) {
    let mut borrowed = HashSet::new();
    let mut sockets: Vec<OwnedFd> = Vec::new();
    for listener in successors {
        match borrow_listener(port, listener) {
            Ok(Some(socket)) => {
                borrowed.insert(listener.socket.inode);
                sockets.push(socket);
            }
            Ok(None) => debug!(
                port,
                inode = listener.socket.inode,
                "a successor listener was closed since the scan"
            ),
            Err(err) => debug!(
                port,
                inode = listener.socket.inode,
                "cannot borrow a successor listener yet: {err}"
            ),
        }
    }
    (borrowed, sockets)
}

/// The draining listeners' sockets, borrowed from their servers for the steering's map.
/// A listener every holder of which has let go of it since the scan (a graceful stop
/// begun meanwhile: nginx's QUIT, Go's `Shutdown`) is closed: the kernel hands it no new
/// connection, so there is nothing to steer away from it, and it is left out; the
/// drain goes on with its connections. Any other failure ends the drain.
fn borrow_listeners(port: u16, listeners: &[Listener]) -> Result<Vec<OwnedFd>, DrainError> {
    let mut borrowed = Vec::with_capacity(listeners.len());
    for listener in listeners {
        match borrow_listener(port, listener)? {
            Some(socket) => borrowed.push(socket),
            None => info!(
                port,
                listener = %listener.socket.id.local,
                "the listener was closed before the steering was attached (the server is stopping by itself): nothing to steer from it"
            ),
        }
    }
    Ok(borrowed)
}

/// Duplicates `listener`'s socket from the first of its owners that still holds it;
/// `None` when every owner has let go of it (exited, closed it, or reused the number).
fn borrow_listener(port: u16, listener: &Listener) -> Result<Option<OwnedFd>, DrainError> {
    let mut errors = Vec::new();
    for owner in &listener.owners {
        match pidfd::duplicate_socket(owner.pid, owner.fd, &listener.socket) {
            Ok(socket) => return Ok(Some(socket)),
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        return Err(DrainError::ListenerOwnerUnknown { port });
    }
    match errors.into_iter().find(|err| !err.is_gone()) {
        Some(source) => Err(DrainError::BorrowListener { port, source }),
        None => Ok(None),
    }
}

/// A task that stops when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_plan_from_a_client_that_does_not_send_keep_refusing_gets_the_default() {
        let mut sent = serde_json::to_value(plan()).unwrap();
        sent.as_object_mut().unwrap().remove("keep_refusing_ms");
        let received: DrainPlan = serde_json::from_value(sent).unwrap();
        assert_eq!(received.keep_refusing, DEFAULT_KEEP_REFUSING);
    }

    fn plan() -> DrainPlan {
        DrainPlan {
            port: 8080,
            timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            quiet_period: Duration::from_secs(1),
            close_grace: Duration::from_secs(2),
            pace: Pace::Spread(Duration::ZERO),
            force: false,
            accept_grace: Duration::from_secs(5),
            pid: None,
            successor_port: None,
            no_connection_close: false,
            websocket_close: false,
            keep_refusing: Duration::from_secs(7),
        }
    }

    #[test]
    fn a_plan_after_some_time_has_what_is_left_of_the_grace_then_the_timeout() {
        let plan = plan();
        let later = plan.after(Duration::from_secs(3));
        assert_eq!(later.accept_grace, Duration::from_secs(2));
        assert_eq!(later.timeout, Duration::from_secs(30));
        let later = plan.after(Duration::from_secs(15));
        assert_eq!(later.accept_grace, Duration::ZERO);
        assert_eq!(later.timeout, Duration::from_secs(20));
        assert_eq!(plan.after(Duration::from_secs(60)).timeout, Duration::ZERO);
    }
}

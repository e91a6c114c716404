//! The drain: from a listener taking traffic to nothing of it left, or a deadline.
//!
//! [`drain_scoped`] runs a [`Drain`] through named stages:
//!
//! 1. **Set up** (`setup`): the capabilities; an accept grace may come first, new
//!    connections still accepted for a while, for load balancers that have not yet seen
//!    the instance leave; which listeners drain and their owners (`ownership`); the
//!    successors (`successors`); the processes that keep the listener; then the
//!    **steering** ([`crate::steer`]): new connections to the port are refused (or handed
//!    to the successors) while the draining listeners live.
//! 2. **Passes** (`pass`), every poll interval: **scan** the port ([`crate::inventory`]),
//!    keeping only what is provably the drain's (`ownership`): a successor's
//!    connections, or ones whose holder is not visible, are never touched; a scan that
//!    fails is tried again a few times. Then the **close policies** (`policy`): the
//!    in-band close (`in_band`), a FIN for what a server kept open past the close grace,
//!    busy connections between a response and their client's next request
//!    (`boundary`), and idle ones ([`crate::close`]), in that order; what they chose is
//!    closed by the paced executor (`paced`), spread by a [`Pace`] so clients do not all
//!    reconnect at once. Requests in flight are left to finish.
//! 3. **End** when the listener's owners hold no connection on the port (also after they
//!    closed the listener themselves) and its accept queue is empty
//!    ([`Outcome::Drained`]), at the deadline ([`Outcome::DeadlineReached`]), or when
//!    cancelled ([`Outcome::Cancelled`]).
//! 4. **Force** (`force`): with `force`, what remains at the deadline is closed.
//! 5. **Finish** (`finish`): the refusal kept for the server's stop or released, and a
//!    [`DrainReport`] of what happened and what remains (`report`).
//!
//! A [`DrainObserver`] hears each pass's [`Progress`], the end and a failure: the
//! drain's status records ([`crate::announce`]) and the caller's `progress` callback.

pub(crate) mod blocking;
mod boundary;
mod finish;
mod force;
mod in_band;
mod observer;
mod ownership;
mod paced;
mod pass;
mod policy;
pub mod report;
pub mod schedule;
mod setup;
mod successors;

use std::{
    collections::HashSet,
    future::Future,
    time::{Duration, Instant},
};

use blocking::Scanner;
use boundary::Rhythms;
pub use observer::DrainObserver;
use observer::OnProgress;
use paced::Pacer;
use pass::{Pass, ScanBudget};
use policy::Policies;
use report::Tally;
pub use report::{DrainReport, ProcessRef, Remaining};
pub use schedule::Pace;
use setup::SetUp;

use serde::{Deserialize, Serialize};

use crate::{
    inventory::{Inventory, InventoryError, Listener, PortInventory, SocketOwner},
    pidfd::PidfdError,
    pidns::PidNamespace,
    steer::{SteerError, Steering},
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
    progress: impl FnMut(&Progress),
) -> Result<DrainReport, DrainError> {
    tokio::pin!(cancel);
    let mut drain = match Drain::set_up(plan, scope, cancel.as_mut()).await? {
        SetUp::Draining(drain) => drain,
        SetUp::Cancelled(report) => return Ok(report),
    };
    let mut observer = (drain.announcer(), OnProgress(progress));
    let (outcome, cancelled) = loop {
        let wait = match drain.pass(&mut observer).await? {
            Pass::Next(wait) => wait,
            Pass::Ended(outcome) => break (outcome, None),
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            mode = &mut cancel => break (Outcome::Cancelled, Some(mode)),
        }
    };
    if outcome == Outcome::DeadlineReached && plan.force {
        drain.force()?;
    }
    Ok(drain.finish(outcome, cancelled, &mut observer))
}

/// A drain between its setup and its end: what its passes share.
struct Drain<'p> {
    plan: &'p DrainPlan,
    scope: Option<PidNamespace>,
    started: Instant,
    /// The accept grace and the timeout from the start.
    deadline: Instant,
    /// The draining listeners' inodes.
    listeners: Vec<u64>,
    /// The processes that keep the draining listeners beyond the server.
    keepers: Vec<SocketOwner>,
    /// `None` once a scan was left running past the deadline.
    scanner: Option<Box<Scanner>>,
    scan_budget: ScanBudget,
    tally: Tally,
    rhythms: Rhythms,
    pacer: Pacer,
    policies: Policies,
    /// The drain's part of the last scan: what remains if the drain ends now.
    last: PortInventory,
    /// The successor listeners new connections go to now, by inode.
    successors: HashSet<u64>,
    _log_forwarder: Option<AbortOnDrop>,
    /// Dropped last (fields drop in order), after what reads its program's maps and log.
    steering: Steering,
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

/// A task that stops when this is dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_plan_from_a_client_that_does_not_send_keep_refusing_gets_the_default() {
        let mut sent = serde_json::to_value(plan()).unwrap();
        sent.as_object_mut().unwrap().remove("keep_refusing_ms");
        let received: DrainPlan = serde_json::from_value(sent).unwrap();
        assert_eq!(received.keep_refusing, DEFAULT_KEEP_REFUSING);
    }

    pub(crate) fn plan() -> DrainPlan {
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

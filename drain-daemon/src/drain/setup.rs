//! The drain's setup, before its first pass: the capabilities, the accept grace, which
//! listeners drain (and their owners), the successors, the processes that keep the
//! listener (how long the refusal lasts), and the steering's attach. The deadline
//! counts from its start: a service manager kills at its own deadline, so the timeout
//! bounds the whole run, setup (scans, owner search, loading and attaching the program)
//! included.

use std::{
    collections::HashSet,
    future::Future,
    os::fd::OwnedFd,
    pin::Pin,
    time::{Duration, Instant},
};

use drain_common::MAX_LISTENERS_PER_PORT;
use tracing::{debug, info, warn};

use super::{
    blocking::{self, Scanner},
    boundary::Rhythms,
    held_in,
    ownership::{self, Ownership},
    paced::Pacer,
    policy::Policies,
    report::Tally,
    successors::{borrow_successors, choose_successors, SuccessorsAre},
    AbortOnDrop, Cancel, Drain, DrainError, DrainPlan, DrainReport, Outcome, ScanBudget,
};
use crate::{
    announce::Announcer,
    capabilities,
    inventory::{owners, Inventory, Listener, PortInventory, SocketOwner},
    netns, pidfd,
    pidns::PidNamespace,
    steer::{Expiry, Lasting, PortLock, Size, Sockets, Steering},
};

/// How the setup ended.
pub(super) enum SetUp<'p> {
    /// The steering is attached: the passes begin.
    Draining(Box<Drain<'p>>),
    /// Cancelled during the accept grace, before anything was refused.
    Cancelled(DrainReport),
}

impl<'p> Drain<'p> {
    pub(super) async fn set_up(
        plan: &'p DrainPlan,
        scope: Option<PidNamespace>,
        cancel: Pin<&mut impl Future<Output = Cancel>>,
    ) -> Result<SetUp<'p>, DrainError> {
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
        let port_lock = match accept_grace(plan, &mut inventory, cancel).await? {
            Ok(port_lock) => port_lock,
            Err(mode) => {
                debug!(?mode, "cancelled during the accept grace");
                let empty = PortInventory {
                    port,
                    ..PortInventory::default()
                };
                let report =
                    Tally::default().report(port, Outcome::Cancelled, started, &empty, 0, None);
                return Ok(SetUp::Cancelled(report));
            }
        };
        // Listeners opened during the grace are drained too.
        let before = blocking::run(|| inventory.scan(port))?;
        let tree = process_tree(plan.pid, scope);
        let draining = draining_listeners(&before, plan.pid, tree.as_ref())?;
        if draining.is_empty() && scope.is_some() {
            return Err(DrainError::NoListenerInScope { port });
        }
        let mut ownership = Ownership::new(&before, draining, scope);
        let mut successor_candidates = None;
        if let Some(successor_port) = plan.successor_port {
            let (found, successors) =
                successor_port_listeners(plan, scope, &ownership, successor_port)?;
            successor_candidates = Some(found);
            ownership = ownership.with_successor_port(successor_port, successors);
        }
        let first_successors: Vec<Listener> = choose_successors(
            port,
            successor_candidates.as_deref().unwrap_or(&before.listeners),
            SuccessorsAre::from_plan(plan, ownership.listeners(), scope),
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
        let lasting = lasting(port, &keepers);
        let attach = Attach {
            plan,
            deadline,
            draining: &draining,
            first_successors: &first_successors,
        };
        let (mut steering, successors) = blocking::run(|| attach.run(port_lock, lasting))?;
        // Ends with the drain (on every return): a forwarder left running would hold the
        // log ring buffer's descriptor for good, one per drain in a daemon.
        let log_forwarder = steering
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
        Ok(SetUp::Draining(Box::new(Drain {
            plan,
            scope,
            started,
            deadline,
            listeners: draining.iter().map(|l| l.socket.inode).collect(),
            keepers,
            scanner: Some(Box::new(Scanner {
                inventory,
                ownership,
            })),
            scan_budget: ScanBudget::default(),
            tally: Tally::default(),
            rhythms: Rhythms::default(),
            pacer: Pacer::new(plan.pace, plan.poll_interval, deadline),
            policies: Policies::standard(plan),
            last: PortInventory {
                port,
                ..PortInventory::default()
            },
            successors,
            _log_forwarder: log_forwarder,
            steering,
        })))
    }

    /// The drain's status records (`drainctl status`), where its network namespace can
    /// be named.
    pub(super) fn announcer(&self) -> Option<Announcer> {
        netns::Identity::current().ok().map(|netns| {
            Announcer::new(
                netns,
                self.plan.port,
                self.listeners.clone(),
                self.plan.timeout,
            )
        })
    }
}

/// The accept grace, when the plan has one: the port's lock once it is over, or how the
/// drain was cancelled during it.
async fn accept_grace(
    plan: &DrainPlan,
    inventory: &mut Inventory,
    cancel: Pin<&mut impl Future<Output = Cancel>>,
) -> Result<Result<PortLock, Cancel>, DrainError> {
    let port = plan.port;
    if !plan.accept_grace.is_zero() {
        // A wrong port is said now, not after the grace (the scan after it checks again).
        if blocking::run(|| inventory.scan(port))?.listeners.is_empty() {
            return Err(DrainError::NoListener { port });
        }
        if let Some(successor_port) = plan.successor_port {
            blocking::run(|| successor_listeners(inventory, successor_port))?;
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
            mode = cancel => return Ok(Err(mode)),
        }
    }
    Ok(Ok(port_lock))
}

/// The processes whose listeners drain: `pid`'s tree (within the scope), the scope's
/// members, or any (`None`).
fn process_tree(pid: Option<i32>, scope: Option<PidNamespace>) -> Option<HashSet<i32>> {
    let process_tree = |pid| blocking::run(|| owners::process_tree(pid));
    match (pid, scope) {
        (Some(pid), None) => Some(process_tree(pid)),
        (Some(pid), Some(scope)) => Some(
            process_tree(pid)
                .into_iter()
                .filter(|&member| scope.contains(member))
                .collect(),
        ),
        (None, Some(scope)) => Some(blocking::run(|| scope.members())),
        (None, None) => None,
    }
}

/// The listeners on `--successor-port`, and the inventory that reads them at each pass.
/// One must be in the scope, and none may be held by a process that drains.
fn successor_port_listeners(
    plan: &DrainPlan,
    scope: Option<PidNamespace>,
    ownership: &Ownership,
    successor_port: u16,
) -> Result<(Vec<Listener>, Inventory), DrainError> {
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
                port: plan.port,
                successor_port,
                pid: Some(owner.pid),
            });
        }
    }
    Ok((found, successors))
}

/// How long the refusal lasts: until the listeners close, or only while this drain
/// holds it when a process that outlives the server keeps them (said).
fn lasting(port: u16, keepers: &[SocketOwner]) -> Lasting {
    if keepers.is_empty() {
        return Lasting::UntilListenersClose;
    }
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
}

/// What the steering is attached with.
struct Attach<'a> {
    plan: &'a DrainPlan,
    deadline: Instant,
    draining: &'a [Listener],
    first_successors: &'a [Listener],
}

impl Attach<'_> {
    /// Refuses new connections to the draining listeners (or hands them to the first
    /// successors): the steering, and the successors' inodes it was given.
    fn run(
        &self,
        port_lock: PortLock,
        lasting: Lasting,
    ) -> Result<(Steering, HashSet<u64>), DrainError> {
        let plan = self.plan;
        let port = plan.port;
        // Borrowed only for the attach: holding them would keep them open after the
        // server closes them. The successors already listening are steered to from the
        // start: a new connection refused until the first pass found them would be lost.
        let mut successors = HashSet::new();
        // A drain killed midway leaves the refusal to end by itself this long after the
        // drain would have ended.
        let forcing = if plan.force {
            plan.close_grace
        } else {
            Duration::ZERO
        };
        let ends = Expiry::after(
            self.deadline.saturating_duration_since(Instant::now()) + forcing + plan.keep_refusing,
        );
        let size = Size {
            draining: self.draining.len(),
            successors: self.first_successors.len(),
        };
        let steering = Steering::refuse(
            port_lock,
            size,
            || {
                let draining = borrow_listeners(port, self.draining)?;
                let (borrowed, sockets) = borrow_successors(port, self.first_successors);
                successors = borrowed;
                Ok::<_, DrainError>(Sockets {
                    draining,
                    successors: sockets,
                })
            },
            lasting,
            ends,
        )?;
        Ok((steering, successors))
    }
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
pub(super) fn borrow_listener(
    port: u16,
    listener: &Listener,
) -> Result<Option<OwnedFd>, DrainError> {
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

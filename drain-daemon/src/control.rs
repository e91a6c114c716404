//! The control API between `drainctl` and `drain-daemon`: JSON lines over a Unix socket.
//!
//! The daemon holds the steering state of its network namespace and runs drains for
//! clients; `drainctl` talks to it when its socket answers and drains on its own
//! otherwise. One connection carries one request: the client sends a [`Request`] line,
//! may later send a [`Request::Cancel`] line, and reads [`Reply`] lines until a final
//! one. A client that disconnects cancels its drain the way SIGTERM does (the refusal
//! stays until the listener closes). On the root socket only root peers with the
//! capabilities of a drain are served, in the daemon's network namespace; on the pod
//! socket any peer is, in its own network and PID namespaces only ([`SocketKind`]).
//!
//! The daemon keeps a register of the drains it runs ([`Drains`]): it reports them to
//! systemd, and when it stops it refuses new drains ([`ErrorKind::Stopping`]: drainctl
//! then drains on its own) but lets the running ones reach their reports, since cutting
//! one midway would break the `ExecStop=` line that asked for it.
//!
//! No peer holds up another: every line read from a peer is bounded ([`lines`]), a peer
//! has [`REQUEST_TIMEOUT`] to send its request and as long to take each reply, and on
//! the pod socket each pod has a few requests at once, records in a few network
//! namespaces ([`pod_quota`]) and drains of bounded length ([`pod_limits`]).

pub mod lines;
pub mod pod_limits;
pub mod pod_quota;
pub mod pod_view;

use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::{info, warn};

use self::lines::LineError;
use crate::{
    capabilities,
    drain::{self, blocking, AbortOnDrop, Cancel, DrainError, DrainPlan, DrainReport, Progress},
    duration::{self, PlanError},
    metrics::Metrics,
    netns,
    pidns::PidNamespace,
    pod::PodPeer,
    steer::{self, SteerError},
};

/// Where `drain-daemon` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/drain-daemon/control.sock";

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Drain {
        plan: DrainPlan,
        /// The client's network namespace; the daemon only drains its own.
        netns_inode: u64,
    },
    Release {
        port: u16,
        netns_inode: u64,
    },
    /// Sent during a drain: stop it. `abort` also stops refusing new connections.
    Cancel {
        abort: bool,
    },
}

/// What the daemon answers. Every reply but `Progress` is final.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Progress(Progress),
    Report(DrainReport),
    Released { released: bool },
    Error { kind: ErrorKind, message: String },
}

/// The class of a failed request, which decides `drainctl`'s exit code.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target or the machine is not as required (exit 3).
    Environment,
    /// Anything else (exit 4).
    Failure,
    /// The daemon serves another network namespace: drain standalone instead.
    OtherNamespace,
    /// The daemon is stopping and takes no new drain: drain standalone instead.
    Stopping,
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connecting to drain-daemon at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to drain-daemon: {0}")]
    Io(#[from] io::Error),
    #[error("drain-daemon sent an invalid reply: {0}")]
    Protocol(#[from] serde_json::Error),
    #[error("drain-daemon closed the connection before its final reply")]
    Closed,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request: {0}")]
    Json(#[from] serde_json::Error),
    /// A drain plan outside the limits drainctl applies: a client other than drainctl
    /// must not get a drain that overflows its deadline or busy-loops.
    #[error("invalid drain plan: {0}")]
    Plan(#[from] PlanError),
}

/// Reads one request line: the JSON of a [`Request`], a drain's plan checked with
/// [`duration::check_plan`]. Pure (no I/O), so the fuzzer calls it (tests/fuzz.rs):
/// whatever a local client sends must be an error reply, never a panic in the daemon.
pub fn parse_request(line: &str) -> Result<Request, RequestError> {
    let request: Request = serde_json::from_str(line)?;
    if let Request::Drain { plan, .. } = &request {
        duration::check_plan(plan)?;
    }
    Ok(request)
}

/// A client connection carrying one request.
pub struct Client {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ControlError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(reader).lines(),
            writer,
        })
    }

    pub async fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        match self.writer.write_all(&line).await {
            // The daemon refuses an unfit peer before reading its request, and closes:
            // the refusal is still there to read.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            result => Ok(result?),
        }
    }

    /// The next reply; [`ControlError::Closed`] if the daemon hung up.
    pub async fn next_reply(&mut self) -> Result<Reply, ControlError> {
        match self.lines.next_line().await? {
            Some(line) => Ok(serde_json::from_str(&line)?),
            None => Err(ControlError::Closed),
        }
    }
}

/// The drains a daemon runs: what its status line shows, and what it waits for before
/// it exits. Cloning shares the register.
#[derive(Clone, Debug)]
pub struct Drains(Arc<watch::Sender<Running>>);

/// A snapshot of the register.
#[derive(Clone, Debug, Default)]
pub struct Running {
    drains: BTreeMap<u64, RunningDrain>,
    next_id: u64,
    stopping: bool,
}

#[derive(Clone, Copy, Debug)]
struct RunningDrain {
    port: u16,
    /// When the drain ends at the latest: its accept grace, its timeout, and the close
    /// grace `--force` may add after the deadline.
    ends_by: Instant,
}

/// A drain's place in the register, given up when the drain ends (also by a panic).
#[derive(Debug)]
struct DrainEntry {
    drains: Drains,
    id: u64,
}

impl Drop for DrainEntry {
    fn drop(&mut self) {
        self.drains.0.send_modify(|running| {
            running.drains.remove(&self.id);
        });
    }
}

impl Default for Drains {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Running::default())))
    }
}

impl Drains {
    /// Registers a drain; `None` once [`Drains::stop`] was called. Checked and
    /// registered under one lock, so no drain starts after the daemon began to wait.
    fn begin(&self, plan: &DrainPlan) -> Option<DrainEntry> {
        let ends_by = Instant::now() + plan.accept_grace + plan.timeout + plan.close_grace + SLACK;
        let mut id = None;
        self.0.send_if_modified(|running| {
            if running.stopping {
                return false;
            }
            id = Some(running.next_id);
            running.next_id += 1;
            let drain = RunningDrain {
                port: plan.port,
                ends_by,
            };
            running.drains.insert(running.next_id - 1, drain);
            true
        });
        id.map(|id| DrainEntry {
            drains: self.clone(),
            id,
        })
    }

    /// From now on new drains are refused with [`ErrorKind::Stopping`].
    pub fn stop(&self) {
        self.0.send_modify(|running| running.stopping = true);
    }

    /// Changes of the register, for the daemon's status line.
    pub fn subscribe(&self) -> watch::Receiver<Running> {
        self.0.subscribe()
    }

    /// Resolves when no drain runs.
    pub async fn finished(&self) {
        let mut changes = self.0.subscribe();
        // Err only if the sender is gone, and `self` holds it.
        let _ = changes.wait_for(|running| running.drains.is_empty()).await;
    }
}

/// Polling and closing past the deadline take a little longer than the deadline itself.
const SLACK: Duration = Duration::from_secs(2);

impl Running {
    /// How many drains run.
    pub fn count(&self) -> usize {
        self.drains.len()
    }

    /// The ports being drained, in order, each once.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.drains.values().map(|drain| drain.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// How long until every running drain has ended at the latest.
    pub fn longest_remaining(&self) -> Duration {
        let now = Instant::now();
        self.drains
            .values()
            .map(|drain| drain.ends_by.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
    }

    pub fn stopping(&self) -> bool {
        self.stopping
    }
}

/// Connections served at once per socket; more wait in the listen backlog. A drain
/// holds its connection for its whole run, so this is also the most drains at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The longest request line: a drain request is about 300 bytes.
pub const MAX_REQUEST_BYTES: usize = lines::MAX_LINE_BYTES;
/// How long a client may take to send its request once connected, and to take each
/// reply: a peer slower than that is cut.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves clients on `listener` until the future is dropped; the drains it started go
/// on (they are tasks), are registered in `drains` and record into `metrics`. A failing `accept` (out of
/// descriptors or memory) is waited out, not fatal: the drains in progress need the
/// daemon more than the next client does.
pub async fn serve(
    listener: UnixListener,
    kind: SocketKind,
    drains: Drains,
    metrics: Metrics,
) -> io::Result<()> {
    let own_netns = netns::current_inode()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let quota = pod_quota::Quota::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("accepting a control connection failed ({err}); trying again in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let drains = drains.clone();
        let metrics = metrics.clone();
        let quota = quota.clone();
        tokio::spawn(async move {
            if let Err(err) = handle(stream, kind, own_netns, &quota, drains, metrics).await {
                warn!("control connection: {err}");
            }
            drop(slot);
        });
    }
}

/// Which rules a control socket's peers are served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// `--socket`: root peers with the capabilities of a drain, in the daemon's network
    /// namespace (`Peer::may_drain`).
    Root,
    /// `--pod-socket`: any peer that can connect, acting only in its own network and
    /// PID namespaces ([`PodPeer`]).
    Pod,
}

/// Where a request is carried out, decided from the peer, never from the request.
enum Target {
    /// The daemon's own network namespace, for a root peer in it.
    Own,
    /// A pod peer's namespaces.
    Pod(PodPeer),
}

/// Where a peer's requests are carried out and its network namespace, or the message
/// that refuses it.
type Judgement = Result<(Target, u64), String>;

/// Judges the peer on a socket of `kind`. The `/proc` reads this takes are kept off the
/// async workers: a `/proc` read can wait on a stuck process.
fn target_of(stream: &UnixStream, kind: SocketKind) -> io::Result<Judgement> {
    Ok(match kind {
        SocketKind::Root => {
            let peer = Peer::of(stream.peer_cred()?);
            let netns = peer.netns.unwrap_or_default();
            peer.may_drain().map(|()| (Target::Own, netns))
        }
        SocketKind::Pod => blocking::run(|| PodPeer::of(stream))
            .map(|peer| {
                let netns = peer.netns;
                (Target::Pod(peer), netns)
            })
            .map_err(|err| err.to_string()),
    })
}

async fn handle(
    stream: UnixStream,
    kind: SocketKind,
    own_netns: u64,
    quota: &pod_quota::Quota,
    drains: Drains,
    metrics: Metrics,
) -> Result<(), ControlError> {
    // Who is asking is known from the socket: nothing an unfit peer sends is read.
    let judged = target_of(&stream, kind)?;
    let (reader, mut writer) = stream.into_split();
    let (target, peer_netns) = match judged {
        Ok(judged) => judged,
        Err(why) => {
            return write_reply(&mut writer, &error_reply(ErrorKind::Environment, why)).await
        }
    };
    // Held until the connection's last reply: a pod's drains and its silent peers alike.
    let _held = match &target {
        Target::Own => None,
        Target::Pod(peer) => match blocking::run(|| quota.take(peer.pod, peer_netns)) {
            Ok(held) => Some(held),
            Err(refusal) => {
                let reply = error_reply(ErrorKind::Environment, refusal.to_string());
                return write_reply(&mut writer, &reply).await;
            }
        },
    };
    let mut reader = BufReader::new(reader);
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, lines::next_line(&mut reader)).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(LineError::TooLong)) => {
            let reply = error_reply(
                ErrorKind::Failure,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            );
            return write_reply(&mut writer, &reply).await;
        }
        Ok(Err(LineError::NotUtf8)) => {
            let reply = error_reply(ErrorKind::Failure, "request is not UTF-8".into());
            return write_reply(&mut writer, &reply).await;
        }
        Ok(Err(LineError::Io(err))) => return Err(err.into()),
        Err(_) => {
            let reply = error_reply(
                ErrorKind::Failure,
                format!("no request within {REQUEST_TIMEOUT:?}"),
            );
            return write_reply(&mut writer, &reply).await;
        }
    };
    let request = match parse_request(&line) {
        Ok(request) => request,
        Err(err) => {
            let reply = error_reply(ErrorKind::Failure, err.to_string());
            return write_reply(&mut writer, &reply).await;
        }
    };
    // The namespace the peer is in, not the one it names, decides: a client elsewhere
    // must not have this namespace's connections cut by claiming it. A root peer is
    // served in the daemon's namespace only; a pod peer in its own only.
    let serves = match target {
        Target::Own => own_netns,
        Target::Pod(_) => peer_netns,
    };
    let reply = match request {
        Request::Drain { netns_inode, .. } | Request::Release { netns_inode, .. }
            if netns_inode != serves || peer_netns != serves =>
        {
            error_reply(
                ErrorKind::OtherNamespace,
                format!("drain-daemon serves network namespace {serves} on this socket, not {peer_netns}"),
            )
        }
        Request::Drain { mut plan, .. } => {
            let asked_pid = plan.pid;
            let scope = match &target {
                Target::Own => None,
                Target::Pod(peer) => match pod_plan(&mut plan, peer) {
                    Ok(()) => Some(peer.pidns),
                    Err(why) => {
                        let reply = error_reply(ErrorKind::Environment, why);
                        return write_reply(&mut writer, &reply).await;
                    }
                },
            };
            let Some(_entry) = drains.begin(&plan) else {
                info!(port = plan.port, "drain refused: drain-daemon is stopping");
                let reply = error_reply(
                    ErrorKind::Stopping,
                    "drain-daemon is stopping and takes no new drain".into(),
                );
                return write_reply(&mut writer, &reply).await;
            };
            info!(port = plan.port, timeout = ?plan.timeout, pod = scope.is_some(), "drain requested");
            return run_drain(plan, target, scope, asked_pid, reader, writer, &metrics).await;
        }
        Request::Release { port, .. } => {
            let released = match target {
                Target::Own => blocking::run(|| steer::release(port)).map_err(DrainError::from),
                // Scoped like its drain: only the refusal of the pod's own listeners.
                Target::Pod(peer) => {
                    let scope = peer.pidns;
                    netns::run_in(peer.pidfd, peer.netns, move || async move {
                        steer::release_checked(port, || drain::check_release_scope(port, scope))
                            .map_err(|err| pod_view::drain_error(err, scope, None))
                    })
                    .await
                    .unwrap_or_else(|err| {
                        Err(SteerError::Netns(io::Error::other(err)).into())
                    })
                }
            };
            match released {
                Ok(released) => Reply::Released { released },
                Err(err) => drain_error_reply(&err),
            }
        }
        Request::Cancel { .. } => error_reply(
            ErrorKind::Failure,
            "nothing to cancel: no drain runs on this connection".into(),
        ),
    };
    write_reply(&mut writer, &reply).await
}

/// A pod's plan names its `--pid` as the pod numbers it: the daemon's number of that
/// process, which must be in the pod's PID namespace. The lookup walks `/proc`, off
/// the async workers: a `/proc` read can wait on a stuck process.
fn pod_plan(plan: &mut DrainPlan, peer: &PodPeer) -> Result<(), String> {
    pod_limits::check_plan(plan)?;
    if let Some(pid) = plan.pid {
        let Some(own_number) = blocking::run(|| peer.pidns.translate(pid)) else {
            return Err(format!(
                "--pid {pid}: no process {pid} in drainctl's PID namespace: a pod drains only its own processes"
            ));
        };
        plan.pid = Some(own_number);
    }
    Ok(())
}

/// What the kernel says of the process at the other end of a control connection
/// (`SO_PEERCRED`, then its `/proc` entry).
struct Peer {
    uid: u32,
    pid: Option<i32>,
    /// Its effective capabilities (`CapEff`), when its `/proc` entry could be read.
    capabilities: Option<u64>,
    /// Its network namespace's inode, likewise.
    netns: Option<u64>,
}

impl Peer {
    /// The peer of `cred`. Its `/proc` entry is read only for a root peer (a refusal
    /// needs no more than the uid), off the async workers: a `/proc` read can wait on a
    /// stuck process.
    fn of(cred: tokio::net::unix::UCred) -> Peer {
        let uid = cred.uid();
        let pid = cred.pid().filter(|_| uid == 0);
        let (capabilities, netns) = blocking::run(|| {
            let Some(pid) = pid else {
                return (None, None);
            };
            let capabilities = capabilities::of(pid);
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .ok()
                .map(|meta| std::os::unix::fs::MetadataExt::ino(&meta));
            (capabilities, netns)
        });
        Peer {
            uid,
            pid: cred.pid(),
            capabilities,
            netns,
        }
    }

    /// Root with the capabilities a drain needs; the message says what is missing.
    fn may_drain(&self) -> Result<(), String> {
        if self.uid != 0 {
            return Err("drain-daemon serves root only: run drainctl as root".into());
        }
        let Some(capabilities) = self.capabilities else {
            return Err(format!(
                "drain-daemon cannot read the capabilities of its peer (pid {:?}): run drainctl in the daemon's PID namespace",
                self.pid
            ));
        };
        let missing = capabilities::missing(capabilities);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "drain-daemon does for its peers only what they could do themselves: drainctl lacks {}",
                missing.join(", ")
            ))
        }
    }
}

/// `asked_pid`: the `--pid` of a pod's plan as the pod numbers it, for its replies
/// ([`pod_view`]).
async fn run_drain(
    plan: DrainPlan,
    target: Target,
    scope: Option<PidNamespace>,
    asked_pid: Option<i32>,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    metrics: &Metrics,
) -> Result<(), ControlError> {
    // A cancel line, or the client going away, ends the drain early. Read here and
    // passed on by a channel: a pod's drain runs on a thread and runtime of its own. A
    // line over the bound is a peer cut: it ends the drain as leaving would.
    let (cancel_tx, cancel_rx) = oneshot::channel();
    let cancel_reader = AbortOnDrop(tokio::spawn(async move {
        let mode = loop {
            match lines::next_line(&mut reader).await {
                Ok(Some(line)) => match parse_request(&line) {
                    Ok(Request::Cancel { abort: true }) => break Cancel::Abort,
                    Ok(Request::Cancel { abort: false }) => break Cancel::Stop,
                    _ => continue,
                },
                Ok(None) | Err(_) => break Cancel::Stop,
            }
        };
        let _ = cancel_tx.send(mode);
    }));
    let cancel = async move { cancel_rx.await.unwrap_or(Cancel::Stop) };
    // Progress goes to the client from a task of its own, through a channel that drops
    // updates the client is too slow for: progress is advisory, and a client that stops
    // reading must not hold the drain (its passes, its deadline) up.
    let (progress_tx, mut progress_rx) = mpsc::channel::<Reply>(16);
    let mut progress_writer = tokio::spawn(async move {
        while let Some(progress) = progress_rx.recv().await {
            // A client that left still gets its drain finished. Unbounded here: a slow
            // reader still gets its report, and the wait for this task is bounded below.
            if write_line(&mut writer, &progress).await.is_err() {
                break;
            }
        }
        writer
    });
    let mut recorder = metrics.drain(plan.port);
    let work = move || async move {
        let recording = &mut recorder;
        let result = drain::drain_scoped(&plan, scope, cancel, move |progress: &Progress| {
            recording.progress(progress);
            let _ = progress_tx.try_send(Reply::Progress(*progress));
        })
        .await;
        recorder.finished(&result);
        result
    };
    let reply = match target {
        Target::Own => drain_reply(work().await),
        Target::Pod(peer) => {
            let scope = peer.pidns;
            match netns::run_in(peer.pidfd, peer.netns, work).await {
                Ok(result) => drain_reply(
                    result
                        .map(|report| pod_view::report(report, scope))
                        .map_err(|err| pod_view::drain_error(err, scope, asked_pid)),
                ),
                Err(err) => error_reply(ErrorKind::Failure, err.to_string()),
            }
        }
    };
    drop(cancel_reader);
    crate::daemon::sweep::after_drain();
    // The callback (and with it the sender) is gone: the writer ends after what is
    // queued, unless the client stopped reading; then it gets no report.
    let writer = tokio::time::timeout(REQUEST_TIMEOUT, &mut progress_writer).await;
    let Ok(Ok(mut writer)) = writer else {
        progress_writer.abort();
        return Err(ControlError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading; its drain finished without it",
        )));
    };
    write_reply(&mut writer, &reply).await
}

fn drain_reply(result: Result<DrainReport, DrainError>) -> Reply {
    match result {
        Ok(report) => Reply::Report(report),
        Err(err) => drain_error_reply(&err),
    }
}

fn drain_error_reply(err: &DrainError) -> Reply {
    let kind = if err.is_environment() {
        ErrorKind::Environment
    } else {
        ErrorKind::Failure
    };
    error_reply(kind, err.to_string())
}

fn error_reply(kind: ErrorKind, message: String) -> Reply {
    Reply::Error { kind, message }
}

/// Writes one reply line; a peer that does not take it within [`REQUEST_TIMEOUT`] is cut
/// (its connection, and its slot, are given up).
async fn write_reply(writer: &mut OwnedWriteHalf, reply: &Reply) -> Result<(), ControlError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, write_line(writer, reply)).await {
        Ok(written) => written,
        Err(_) => Err(ControlError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no reply within {REQUEST_TIMEOUT:?}; cut"),
        ))),
    }
}

async fn write_line(writer: &mut OwnedWriteHalf, reply: &Reply) -> Result<(), ControlError> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    writer.write_all(&line).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let request = Request::Drain {
            plan: DrainPlan {
                port: 8080,
                timeout: Duration::from_secs(30),
                poll_interval: Duration::from_millis(100),
                quiet_period: Duration::from_secs(1),
                close_grace: Duration::from_secs(2),
                pace: crate::drain::Pace::Batches {
                    percent: 25,
                    interval: Duration::from_millis(500),
                },
                force: true,
                accept_grace: Duration::ZERO,
                pid: None,
                successor_port: None,
                no_connection_close: false,
                websocket_close: false,
                keep_refusing: crate::drain::DEFAULT_KEEP_REFUSING,
            },
            netns_inode: 4026531840,
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(
            line,
            r#"{"request":"drain","plan":{"port":8080,"timeout_ms":30000,"poll_interval_ms":100,"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{"batches":{"percent":25,"interval_ms":500}},"force":true,"accept_grace_ms":0,"pid":null,"no_connection_close":false,"keep_refusing_ms":90000},"netns_inode":4026531840}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        let cancel: Request = serde_json::from_str(r#"{"request":"cancel","abort":true}"#).unwrap();
        assert_eq!(cancel, Request::Cancel { abort: true });
    }

    fn plan(port: u16) -> DrainPlan {
        DrainPlan {
            port,
            timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            quiet_period: Duration::from_secs(1),
            close_grace: Duration::from_secs(2),
            pace: crate::drain::Pace::Spread(Duration::ZERO),
            force: false,
            accept_grace: Duration::from_secs(5),
            pid: None,
            successor_port: None,
            no_connection_close: false,
            websocket_close: false,
            keep_refusing: crate::drain::DEFAULT_KEEP_REFUSING,
        }
    }

    #[tokio::test]
    async fn a_stopped_register_takes_no_drain_and_waits_for_the_running_ones() {
        let drains = Drains::default();
        let first = drains.begin(&plan(8080)).expect("taken before the stop");
        let second = drains.begin(&plan(9090)).expect("taken before the stop");
        let running = drains.subscribe().borrow().clone();
        assert_eq!((running.count(), running.ports()), (2, vec![8080, 9090]));
        // Accept grace + timeout + close grace, and the slack.
        assert!(running.longest_remaining() > Duration::from_secs(37));
        assert!(running.longest_remaining() <= Duration::from_secs(39));
        drains.stop();
        assert!(
            drains.begin(&plan(7070)).is_none(),
            "no drain after the stop"
        );
        let finished = tokio::spawn({
            let drains = drains.clone();
            async move { drains.finished().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!finished.is_finished(), "one drain still runs");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), finished)
            .await
            .expect("finished once no drain runs")
            .unwrap();
    }

    #[test]
    fn a_peer_needs_root_and_the_capabilities_of_a_drain() {
        let peer = |capabilities| Peer {
            uid: 0,
            pid: Some(1),
            capabilities,
            netns: Some(1),
        };
        assert!(peer(Some(0x1ff_ffff_ffff)).may_drain().is_ok());
        let none = peer(Some(0)).may_drain().unwrap_err();
        assert!(
            none.contains("CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_BPF"),
            "{none}"
        );
        assert!(peer(None).may_drain().is_err());
    }

    #[test]
    fn error_replies_carry_their_kind() {
        let reply = error_reply(ErrorKind::OtherNamespace, "x".into());
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            line,
            r#"{"reply":"error","kind":"other_namespace","message":"x"}"#
        );
    }

    #[test]
    fn plans_outside_the_limits_are_refused_not_run() {
        let line = |timeout_ms: &str, poll_interval_ms: &str| {
            format!(
                r#"{{"request":"drain","plan":{{"port":8080,"timeout_ms":{timeout_ms},"poll_interval_ms":{poll_interval_ms},"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{{"spread":0}},"force":false,"accept_grace_ms":0}},"netns_inode":1}}"#
            )
        };
        assert!(parse_request(&line("30000", "100")).is_ok());
        let err = parse_request(&line("18446744073709551615", "100")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid drain plan: --timeout: "),
            "{err}"
        );
        let err = parse_request(&line("30000", "0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid drain plan: --poll-interval: shorter than the minimum of 10ms"
        );
        assert!(matches!(
            parse_request("{\"request\":"),
            Err(RequestError::Json(_))
        ));
    }
}

//! `drain-daemon`: the long-lived process that runs drains for `drainctl`.
//!
//! It owns the control socket's life (one daemon per socket, stale sockets replaced,
//! root-only permissions), or takes the socket systemd passes it (socket activation,
//! `LISTEN_FDS`), and serves [`crate::control`] until SIGINT or SIGTERM; with
//! `--pod-socket` also a second socket for pods without capabilities ([`crate::pod`]). Stopping never
//! cuts a drain: the daemon stops taking new ones and waits for the running ones to
//! report (each is bounded by its deadline), because the `ExecStop=` that asked for a
//! drain is usually stopping at the same time as the daemon (a host shutdown, a package
//! upgrade). Under systemd (`Type=notify`) it says when it is ready, which drains run,
//! and that it is stopping, asking for more stop time while drains need it. Under
//! systemd it logs to journald with priorities ([`crate::app::journal`]); with
//! `--metrics-address` it serves Prometheus metrics ([`crate::metrics`]).

mod socket;
pub mod sweep;

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Parser;
use sd_notify::NotifyState;
use tokio::net::UnixListener;
use tracing::{error, info, warn};

use self::socket::OwnSocket;
use crate::{
    app::{logging, Exit},
    control::{self, Drains, Running, SocketKind},
    metrics::{self, Metrics},
};

#[derive(Debug, Parser)]
#[command(
    name = "drain-daemon",
    version,
    about = "Serve drainctl: run connection drains and hold their eBPF steering state"
)]
pub struct DaemonArgs {
    /// The control socket to listen on.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve pods on this socket (off unless given): any process that can connect
    /// may drain, but only in its own network namespace and only what the processes of
    /// its own PID namespace hold. Made mode 0666 in a directory of mode 0755: mounting
    /// it into a pod is what grants the pod the right to drain itself.
    #[arg(long, value_name = "PATH")]
    pub pod_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`GET /metrics`), for example
    /// 127.0.0.1:9465. Off unless given.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `drain-daemon`'s command line as clap sees it (for the package's man page).
pub fn command() -> clap::Command {
    <DaemonArgs as clap::CommandFactory>::command()
}

/// Entry point of the `drain-daemon` binary.
pub fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    logging::init_for_daemon(args.verbose);
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "drain-daemon: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH): run it as root"
        );
        return Exit::Environment.into();
    }
    // Before the runtime starts its threads: taking the inherited socket unsets
    // LISTEN_FDS, which is not safe while other threads read the environment.
    let inherited = match listenfd::ListenFd::from_env().take_unix_listener(0) {
        Ok(inherited) => inherited,
        Err(err) => {
            eprintln!("drain-daemon: the socket passed in LISTEN_FDS is unusable: {err}");
            return Exit::Environment.into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("drain-daemon: cannot start the async runtime: {err}");
            return Exit::Failure.into();
        }
    };
    let served = runtime.block_on(run(
        &args.socket,
        inherited,
        args.pod_socket.as_deref(),
        args.metrics_address,
    ));
    // A drain's scan left stuck past its deadline (a blocking thread) must not hold the
    // exit: every drain has reported by now.
    runtime.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("drain-daemon: {err}");
            Exit::Environment.into()
        }
    }
}

async fn run(
    socket: &Path,
    inherited: Option<std::os::unix::net::UnixListener>,
    pod_socket: Option<&Path>,
    metrics_address: Option<SocketAddr>,
) -> io::Result<()> {
    // An inherited socket belongs to systemd's .socket unit, which also removes it.
    let (listener, own_socket) = match inherited {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            (UnixListener::from_std(listener)?, None)
        }
        None => {
            let (listener, own) = bind(socket, ROOT_ONLY)?;
            (listener, Some(own))
        }
    };
    let (pod_listener, own_pod_socket) = match pod_socket {
        Some(path) => {
            let (listener, own) = bind(path, FOR_PODS)?;
            (Some(listener), Some(own))
        }
        None => (None, None),
    };
    let metrics = Metrics::default();
    if let Some(address) = metrics_address {
        let listener = metrics::bind(address)
            .await
            .map_err(|err| io::Error::new(err.source.kind(), err.to_string()))?;
        info!(address = %address, "serving metrics");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let stop = shutdown_signal();
    sweep::sweep();
    tokio::spawn(sweep::every_period());
    let drains = Drains::default();
    tokio::spawn(report_status(drains.subscribe()));
    let mut pod_server = match pod_listener {
        Some(listener) => tokio::spawn(control::serve(
            listener,
            SocketKind::Pod,
            drains.clone(),
            metrics.clone(),
        )),
        None => tokio::spawn(std::future::pending()),
    };
    info!(
        socket = %socket.display(),
        activated = own_socket.is_none(),
        pod_socket = pod_socket.map(|path| path.display().to_string()),
        "serving drainctl"
    );
    notify(&[NotifyState::Ready]);
    let mut server = tokio::spawn(control::serve(
        listener,
        SocketKind::Root,
        drains.clone(),
        metrics,
    ));
    let result = tokio::select! {
        joined = &mut server => joined.unwrap_or_else(|err| Err(io::Error::other(err))),
        joined = &mut pod_server => joined.unwrap_or_else(|err| Err(io::Error::other(err))),
        () = stop => Ok(()),
    };
    // From here new drains are refused with `stopping` (drainctl then drains on its
    // own), but the socket is still served: a client systemd queued on an activated
    // socket is answered rather than left hanging. An own socket is removed at once, so
    // new clients go standalone without asking. STOPPING=1 now: the stop has begun,
    // systemd shows it while the drains finish.
    drains.stop();
    notify(&[NotifyState::Stopping]);
    for own in own_socket.iter().chain(&own_pod_socket) {
        own.remove();
    }
    let running = drains.subscribe().borrow().clone();
    if running.count() > 0 {
        info!(
            drains = running.count(),
            ports = ?running.ports(),
            "stopping: waiting for running drains to report"
        );
        // Drains longer than the unit's TimeoutStopSec= (their length is the client's
        // to choose) get the time they need, bounded by their deadlines.
        let usec = running.longest_remaining().as_micros();
        notify(&[NotifyState::ExtendTimeoutUsec(
            u32::try_from(usec).unwrap_or(u32::MAX),
        )]);
        tokio::select! {
            () = drains.finished() => {}
            () = shutdown_signal() => {
                let left = drains.subscribe().borrow().count();
                warn!(drains = left, "second signal: exiting with drains running (their refusal stays pinned)");
            }
        }
    }
    server.abort();
    pod_server.abort();
    info!("stopped");
    result
}

/// Keeps systemd's status line (`systemctl status drain-daemon`) on the running drains.
async fn report_status(mut changes: tokio::sync::watch::Receiver<Running>) {
    loop {
        let line = status_line(&changes.borrow_and_update());
        notify(&[NotifyState::Status(&line)]);
        if changes.changed().await.is_err() {
            return;
        }
    }
}

fn status_line(running: &Running) -> String {
    let ports = running
        .ports()
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match (running.stopping(), running.count()) {
        (false, 0) => "serving drainctl, no drain in progress".into(),
        (false, n) => format!("serving drainctl, {n} drain(s) in progress (ports {ports})"),
        (true, 0) => "stopping".into(),
        (true, n) => format!("stopping: waiting for {n} drain(s) in progress (ports {ports})"),
    }
}

/// Tells systemd (when it started us with `Type=notify`); a failure only costs the status.
fn notify(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!("cannot notify systemd: {err}");
    }
}

/// Who may connect to a socket: the modes of the socket and of the directories made
/// for it.
#[derive(Clone, Copy)]
struct Access {
    socket: u32,
    directory: u32,
}

/// The root socket: root only.
const ROOT_ONLY: Access = Access {
    socket: 0o600,
    directory: 0o700,
};
/// The pod socket: whoever can reach it (a pod it is mounted into, any uid).
const FOR_PODS: Access = Access {
    socket: 0o666,
    directory: 0o755,
};

/// Creates a control socket ([`OwnSocket`]) and serves it with tokio.
fn bind(path: &Path, access: Access) -> io::Result<(UnixListener, OwnSocket)> {
    let (listener, socket) = OwnSocket::bind(path, access.socket, access.directory)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, socket))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a stop that comes right after the daemon says it
/// serves (a drain already requested) must not find the default action, which kills.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match handlers {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}

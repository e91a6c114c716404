//! The daemon's side of the protocol: it accepts clients ([`serve`]), judges each peer
//! ([`super::peer`]), reads its one request and answers it. No peer holds up another:
//! every line read from a peer is bounded ([`lines`]), a peer has [`REQUEST_TIMEOUT`] to
//! send its request and as long to take each reply, and the connections served at once
//! are bounded ([`MAX_CONNECTIONS`]).

use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
};
use tracing::{info, warn};

use super::{
    lines::{self, LineError},
    parse_request,
    peer::{self, SocketKind, Target},
    pod_quota, pod_view,
    protocol::encode_line,
    served_drain::run_drain,
    ControlError, Drains, ErrorKind, Reply, Request,
};
use crate::{
    app::Blame,
    drain::{self, blocking, DrainError},
    metrics::Metrics,
    netns,
    steer::{self, SteerError},
};

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

async fn handle(
    stream: UnixStream,
    kind: SocketKind,
    own_netns: u64,
    quota: &pod_quota::Quota,
    drains: Drains,
    metrics: Metrics,
) -> Result<(), ControlError> {
    // Who is asking is known from the socket: nothing an unfit peer sends is read.
    let judged = peer::target_of(&stream, kind)?;
    let (reader, mut writer) = stream.into_split();
    let (target, peer_netns) = match judged {
        Ok(judged) => judged,
        Err(why) => {
            return write_reply(&mut writer, &Reply::error(ErrorKind::Environment, why)).await
        }
    };
    // Held until the connection's last reply: a pod's drains and its silent peers alike.
    let _held = match &target {
        Target::Own => None,
        Target::Pod(peer) => match blocking::run(|| quota.take(peer.pod, peer_netns)) {
            Ok(held) => Some(held),
            Err(refusal) => {
                let reply = Reply::error(ErrorKind::Environment, refusal.to_string());
                return write_reply(&mut writer, &reply).await;
            }
        },
    };
    let mut reader = BufReader::new(reader);
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, lines::next_line(&mut reader)).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(LineError::TooLong)) => {
            let reply = Reply::error(
                ErrorKind::Failure,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            );
            return write_reply(&mut writer, &reply).await;
        }
        Ok(Err(LineError::NotUtf8)) => {
            let reply = Reply::error(ErrorKind::Failure, "request is not UTF-8".into());
            return write_reply(&mut writer, &reply).await;
        }
        Ok(Err(LineError::Io(err))) => return Err(err.into()),
        Err(_) => {
            let reply = Reply::error(
                ErrorKind::Failure,
                format!("no request within {REQUEST_TIMEOUT:?}"),
            );
            return write_reply(&mut writer, &reply).await;
        }
    };
    let request = match parse_request(&line) {
        Ok(request) => request,
        Err(err) => {
            let reply = Reply::error(ErrorKind::Failure, err.to_string());
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
            Reply::error(
                ErrorKind::OtherNamespace,
                format!("drain-daemon serves network namespace {serves} on this socket, not {peer_netns}"),
            )
        }
        Request::Drain { mut plan, .. } => {
            let asked_pid = plan.pid;
            let scope = match &target {
                Target::Own => None,
                Target::Pod(peer) => match peer::pod_plan(&mut plan, peer) {
                    Ok(()) => Some(peer.pidns),
                    Err(why) => {
                        let reply = Reply::error(ErrorKind::Environment, why);
                        return write_reply(&mut writer, &reply).await;
                    }
                },
            };
            let Some(_entry) = drains.begin(&plan) else {
                info!(port = plan.port, "drain refused: drain-daemon is stopping");
                let reply = Reply::error(
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
        Request::Cancel { .. } => Reply::error(
            ErrorKind::Failure,
            "nothing to cancel: no drain runs on this connection".into(),
        ),
    };
    write_reply(&mut writer, &reply).await
}

pub(super) fn drain_error_reply(err: &DrainError) -> Reply {
    Reply::error(Blame::of(err).into(), err.to_string())
}

/// Writes one reply line; a peer that does not take it within [`REQUEST_TIMEOUT`] is cut
/// (its connection, and its slot, are given up).
pub(super) async fn write_reply(
    writer: &mut OwnedWriteHalf,
    reply: &Reply,
) -> Result<(), ControlError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, write_line(writer, reply)).await {
        Ok(written) => written,
        Err(_) => Err(ControlError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no reply within {REQUEST_TIMEOUT:?}; cut"),
        ))),
    }
}

pub(super) async fn write_line(
    writer: &mut OwnedWriteHalf,
    reply: &Reply,
) -> Result<(), ControlError> {
    writer.write_all(&encode_line(reply)?).await?;
    Ok(())
}

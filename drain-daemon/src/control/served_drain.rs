//! A drain served on one connection: the drain runs while the client may send a cancel
//! line, its progress goes to the client without the client holding it up, and the
//! report is the connection's final reply.

use std::io;

use tokio::{
    io::BufReader,
    net::unix::{OwnedReadHalf, OwnedWriteHalf},
    sync::{mpsc, oneshot},
};

use super::{
    lines, parse_request,
    peer::Target,
    pod_view,
    server::{drain_error_reply, write_line, write_reply, REQUEST_TIMEOUT},
    ControlError, ErrorKind, Reply, Request,
};
use crate::{
    drain::{self, AbortOnDrop, Cancel, DrainError, DrainPlan, DrainReport, Progress},
    metrics::Metrics,
    netns,
    pidns::PidNamespace,
};

/// `asked_pid`: the `--pid` of a pod's plan as the pod numbers it, for its replies
/// ([`pod_view`]).
pub(super) async fn run_drain(
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
                Err(err) => Reply::error(ErrorKind::Failure, err.to_string()),
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

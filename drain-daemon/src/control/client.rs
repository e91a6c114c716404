//! `drainctl`'s side of the protocol: a [`Client`] connection, and a drain or a release
//! asked over it. Every wait is bounded, by the drain's own length and a margin: a
//! daemon that stops answering does not hold drainctl, nor the service stop that runs
//! it. A cancel is a line sent on the same connection; a daemon that does not read it
//! still sees the connection close when drainctl exits, which cancels the drain too.

use std::{future::Future, io, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
};
use tracing::{debug, info, warn};

use super::{protocol::encode_line, ControlError, ErrorKind, Reply, Request};
use crate::{
    app::{Exit, Failure},
    drain::{Cancel, DrainPlan, DrainReport, Progress},
    netns,
};

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
        match self.writer.write_all(&encode_line(request)?).await {
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

/// How a drain through the daemon ended.
pub enum ViaDaemon {
    Report(Box<DrainReport>),
    /// No daemon serves this drain (another network namespace, stopping): the caller
    /// drains standalone.
    NotThere,
    /// The daemon went away midway: the caller carries on standalone.
    WentAway,
    /// The cancel came and the daemon did not report in time; says what the daemon did
    /// instead. The caller exits without a report.
    Stopped(String),
}

/// How long past the drain's own end (accept grace, timeout, close grace) drainctl waits
/// for the daemon's report: the daemon reports within about 2 s of it.
const DAEMON_MARGIN: Duration = Duration::from_secs(5);
/// How long drainctl, once cancelling, waits for the daemon to confirm: the signal that
/// cancelled ends drainctl whatever the daemon does.
const CANCEL_REPLY_WAIT: Duration = Duration::from_secs(1);

impl Client {
    /// Runs the drain in the daemon, for as long as the drain itself at most
    /// (`DAEMON_MARGIN`). `cancel` resolves when the drain should stop early; each
    /// progress reply goes to `on_progress`.
    pub async fn drain(
        mut self,
        plan: &DrainPlan,
        cancel: impl Future<Output = Cancel>,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<ViaDaemon, Failure> {
        let request = Request::Drain {
            plan: plan.clone(),
            netns_inode: own_netns()?,
        };
        let bound = plan.accept_grace + plan.timeout + plan.close_grace + DAEMON_MARGIN;
        let give_up = tokio::time::sleep(bound);
        tokio::pin!(give_up);
        tokio::pin!(cancel);
        self.send(&request).await.map_err(daemon_failure)?;
        let mut cancelled = false;
        loop {
            let reply = tokio::select! {
                reply = self.next_reply() => match reply {
                    Ok(reply) => reply,
                    Err(_) if cancelled => return Ok(ViaDaemon::Stopped("closed the connection".into())),
                    // The daemon was killed or crashed midway (a stop lets drains finish):
                    // the service's stop still needs its drain.
                    Err(err) => {
                        warn!("drain-daemon went away in the middle of the drain ({err}); carrying on standalone (what it closed is not in this report)");
                        return Ok(ViaDaemon::WentAway);
                    }
                },
                mode = &mut cancel, if !cancelled => {
                    cancelled = true;
                    give_up.as_mut().reset(tokio::time::Instant::now() + CANCEL_REPLY_WAIT);
                    self.ask_to_cancel(mode).await;
                    continue;
                }
                () = &mut give_up => {
                    if cancelled {
                        return Ok(ViaDaemon::Stopped(format!(
                            "did not confirm the cancel within {CANCEL_REPLY_WAIT:?}"
                        )));
                    }
                    self.ask_to_cancel(Cancel::Stop).await;
                    return Err(Failure::new(
                        Exit::Failure,
                        format!(
                            "drain-daemon did not report within {bound:?} (the drain's accept grace, \
                             timeout and close grace, and {DAEMON_MARGIN:?}): asked it to stop; \
                             check its log (journalctl -u drain-daemon)"
                        ),
                    ));
                }
            };
            match reply {
                Reply::Progress(update) => on_progress(&update),
                Reply::Report(report) => return Ok(ViaDaemon::Report(Box::new(report))),
                Reply::Error {
                    kind: ErrorKind::OtherNamespace | ErrorKind::Stopping,
                    message,
                } => {
                    info!("{message}; draining standalone");
                    return Ok(ViaDaemon::NotThere);
                }
                Reply::Error { kind, message } => return Err(refused(kind, message)),
                Reply::Released { .. } => {
                    return Err(Failure::new(
                        Exit::Failure,
                        "drain-daemon answered a drain with a release".into(),
                    ))
                }
            }
        }
    }

    /// Sends the cancel line, for [`CANCEL_REPLY_WAIT`] at most.
    async fn ask_to_cancel(&mut self, mode: Cancel) {
        let cancel = Request::Cancel {
            abort: mode == Cancel::Abort,
        };
        if let Ok(Err(err)) = tokio::time::timeout(CANCEL_REPLY_WAIT, self.send(&cancel)).await {
            debug!("sending the cancel to drain-daemon: {err}");
        }
    }

    /// Whether the daemon released `port`; `Ok(None)`: it serves another network
    /// namespace, or is stopping.
    pub async fn release(&mut self, port: u16) -> Result<Option<bool>, Failure> {
        let netns_inode = own_netns()?;
        self.send(&Request::Release { port, netns_inode })
            .await
            .map_err(daemon_failure)?;
        // A release is one map lookup and an unpin: a daemon silent for this long is stuck.
        let reply = tokio::time::timeout(2 * DAEMON_MARGIN, self.next_reply())
            .await
            .map_err(|_| {
                Failure::new(
                    Exit::Failure,
                    format!(
                        "drain-daemon did not answer the release within {:?}: check its log (journalctl -u drain-daemon)",
                        2 * DAEMON_MARGIN
                    ),
                )
            })?;
        match reply.map_err(daemon_failure)? {
            Reply::Released { released } => Ok(Some(released)),
            Reply::Error {
                kind: ErrorKind::OtherNamespace | ErrorKind::Stopping,
                ..
            } => Ok(None),
            Reply::Error { kind, message } => Err(refused(kind, message)),
            other => Err(Failure::new(
                Exit::Failure,
                format!("drain-daemon answered a release with {other:?}"),
            )),
        }
    }
}

/// The network namespace the request names: the daemon serves it only if it is its own.
fn own_netns() -> Result<u64, Failure> {
    netns::current_inode()
        .map_err(|err| Failure::new(Exit::Failure, format!("reading /proc/self/ns/net: {err}")))
}

fn daemon_failure(err: ControlError) -> Failure {
    Failure::new(Exit::Failure, err.to_string())
}

/// A request the daemon refused: its error kind decides the exit code.
fn refused(kind: ErrorKind, message: String) -> Failure {
    let exit = match kind {
        ErrorKind::Environment => Exit::Environment,
        ErrorKind::Failure | ErrorKind::OtherNamespace | ErrorKind::Stopping => Exit::Failure,
    };
    Failure::new(exit, message)
}

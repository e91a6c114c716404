//! The drain's side of the in-band close ([`crate::close_http`]): the program loaded
//! while the passes already run, and each pass's busy connections armed.
//!
//! Loading the sk_msg program is a verification of tens of milliseconds (0.04 s on this
//! project's machines, and slower on a loaded host): done before the first pass, it would
//! hold up every idle close and bunch the close schedule's first slice. So it loads on a
//! blocking thread from the drain's start, and the passes arm connections from the first
//! one after it is in.

use std::{
    collections::HashSet,
    future::Future as _,
    pin::pin,
    task::{Context, Poll, Waker},
};

use tokio::task::{JoinError, JoinHandle};
use tracing::{debug, info, warn};

use crate::{close_http::CloseHttp, inventory::PortInventory};

/// Where the in-band close of a drain stands.
pub(super) enum InBand {
    /// Turned off (`--no-connection-close`), or refused by the kernel (said once).
    Off,
    Loading(JoinHandle<Option<CloseHttp>>),
    Ready(Box<CloseHttp>),
}

impl InBand {
    /// Starts loading the program, unless `off`.
    pub(super) fn start(off: bool, websocket_close: bool) -> Self {
        if off {
            return Self::Off;
        }
        Self::Loading(tokio::task::spawn_blocking(move || load(websocket_close)))
    }

    /// The loaded program, once it is in; never waits for it.
    pub(super) fn ready(&mut self) -> Option<&mut CloseHttp> {
        if let Self::Loading(loading) = self {
            let loaded = finished(loading)?;
            *self = match loaded {
                Ok(Some(close_http)) => {
                    info!("in-band close in place: busy HTTP/1.x connections are asked to close in a response");
                    Self::Ready(Box::new(close_http))
                }
                Ok(None) => Self::Off,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => Self::Off,
            };
        }
        match self {
            Self::Ready(close_http) => Some(close_http),
            Self::Off | Self::Loading(_) => None,
        }
    }

    /// The program, if it was loaded by now.
    pub(super) fn loaded(&self) -> Option<&CloseHttp> {
        match self {
            Self::Ready(close_http) => Some(close_http),
            Self::Off | Self::Loading(_) => None,
        }
    }
}

/// The result of a task that has finished, taken without waiting (a pass runs on a
/// blocking thread); `None` while it runs. Unconstrained: tokio's cooperative budget
/// would otherwise make a poll of a finished task pending.
fn finished<T>(task: &mut JoinHandle<T>) -> Option<Result<T, JoinError>> {
    if !task.is_finished() {
        return None;
    }
    let mut context = Context::from_waker(Waker::noop());
    match pin!(tokio::task::unconstrained(task)).poll(&mut context) {
        Poll::Ready(result) => Some(result),
        Poll::Pending => None,
    }
}

/// The program, or `None` (said once) where the kernel refuses it: the drain then closes
/// busy connections at their boundaries only.
fn load(websocket_close: bool) -> Option<CloseHttp> {
    CloseHttp::load(websocket_close)
        .inspect_err(|err| {
            warn!("cannot ask HTTP/1.x clients to close (`Connection: close`): {err}; back-to-back clients are left to the deadline")
        })
        .ok()
}

/// Adds the busy connections not seen before to the program's map, and takes out those
/// it is done with. Idle ones are closed gracefully anyway; a connection that cannot be
/// added (a kTLS socket, its owner gone) is left to the boundaries.
pub(super) fn arm_busy(close_http: &mut CloseHttp, snapshot: &PortInventory) {
    let open: HashSet<u64> = snapshot
        .connections
        .iter()
        .map(|c| c.socket.id.cookie)
        .collect();
    close_http.retire(|cookie| open.contains(&cookie));
    for connection in snapshot.in_flight() {
        if close_http.is_armed(connection) {
            continue;
        }
        match close_http.arm(connection) {
            Ok(()) => debug!(peer = %connection.socket.id.remote, "in-band close: armed"),
            Err(err) => {
                debug!(peer = %connection.socket.id.remote, "not asking for Connection: close: {err}");
            }
        }
    }
}

//! Closing an idle connection from outside the server, without losing a request.
//!
//! The graceful way borrows the server's socket ([`crate::pidfd`]) and shuts down its
//! *read* side only. The server's next read returns EOF, after any request already
//! queued, so it finishes whatever it is writing, reads EOF and closes the connection
//! itself, exactly as when a keep-alive client leaves; the client reads the server's FIN.
//! Writes are untouched, so a response still being produced (a stream between two
//! chunks, a slow answer that looked idle) is delivered whole. If the server has not
//! closed the connection after a grace period, [`send_fin`] shuts down the write side
//! too: the client gets the FIN from us. SOCK_DESTROY (RST; the server sees
//! ECONNABORTED) is the fallback when no owner is visible or ptrace rights are missing.
//!
//! Immediately before closing, the connection is re-read by its exact identity and
//! closed only if it still may be ([`When`]): idle, or still early enough in its client's
//! pause ([`Rhythm`]) with nothing sent since the scan but in answer to a new request
//! (more of an answer is a stream still being written); a request that arrived since
//! the scan is served.

use std::os::fd::{AsFd as _, OwnedFd};

use rustix::net::{shutdown, Shutdown};
use tracing::{debug, warn};

use crate::{
    failpoint::{self, Fault, Point},
    inventory::{
        sock_diag::{SockDiagError, SocketId, TcpSocket},
        Activity, Busy, Connection, Inventory, InventoryError, Rhythm, SocketOwner,
    },
    pidfd::{self, PidfdError},
};

/// How a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMethod {
    /// The server was made to read EOF and close it: the peer reads EOF.
    Graceful,
    /// SOCK_DESTROY: the peer gets a RST.
    Abortive,
}

/// What happened to a connection the drain chose to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseOutcome {
    Closed(CloseMethod),
    /// It was gone by the time of the re-check.
    AlreadyClosed,
    /// A request arrived since the scan: left alone.
    BecameBusy(Busy),
}

/// Why a connection could not be closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    #[error("re-reading the connection: {0}")]
    Recheck(#[source] InventoryError),
    #[error("shutdown() of the borrowed socket: {0}")]
    Shutdown(#[source] rustix::io::Errno),
    #[error("SOCK_DESTROY: {destroy} (graceful close was not possible: {graceful})")]
    Destroy {
        destroy: InventoryError,
        graceful: String,
    },
}

/// When a connection may be closed, judged again on a fresh read right before closing.
#[derive(Clone, Copy, Debug)]
pub enum When<'a> {
    /// It is idle (`classify`).
    Idle,
    /// It is idle, or between a response and its client's next request with enough of
    /// the pause left ([`Rhythm::at_boundary`]).
    AtBoundary { rhythm: &'a Rhythm },
}

impl When<'_> {
    /// Whether a connection that is not idle, `socket` on the fresh read and `scanned`
    /// when the scan chose it, may be closed all the same.
    fn allows_busy(self, scanned: &TcpSocket, socket: &TcpSocket, busy: Busy) -> bool {
        match self {
            When::Idle => false,
            When::AtBoundary { rhythm } => {
                !answer_went_on(scanned, socket)
                    && rhythm.at_boundary(socket, Activity::InFlight(busy))
            }
        }
    }
}

/// Whether the server sent more since the scan (`scanned`) with no new request in
/// between (`now`): the answer the scan took for complete is still being written (a
/// stream between two pieces), and a close now would cut it where the server watches
/// its client while answering.
fn answer_went_on(scanned: &TcpSocket, now: &TcpSocket) -> bool {
    match (scanned.info, now.info) {
        (Some(before), Some(after)) => {
            after.data_segs_out > before.data_segs_out && after.data_segs_in == before.data_segs_in
        }
        _ => true,
    }
}

/// Closes `connection` if it still may be closed (`when`): gracefully when its owner's
/// socket can be borrowed, abortively otherwise.
pub fn close_when(
    inventory: &mut Inventory,
    connection: &Connection,
    when: When<'_>,
) -> Result<CloseOutcome, CloseError> {
    let id = &connection.socket.id;
    match inventory.recheck(id).map_err(CloseError::Recheck)? {
        None => return Ok(CloseOutcome::AlreadyClosed),
        Some((socket, Activity::InFlight(busy)))
            if !when.allows_busy(&connection.socket, &socket, busy) =>
        {
            return Ok(CloseOutcome::BecameBusy(busy));
        }
        Some(_) => {}
    }
    let graceful = match &connection.owner {
        Some(owner) => match borrow(owner, connection) {
            Ok(socket) => {
                shutdown(socket.as_fd(), Shutdown::Read).map_err(CloseError::Shutdown)?;
                return Ok(CloseOutcome::Closed(CloseMethod::Graceful));
            }
            Err(err) => describe(&err),
        },
        None => "no process holding it is visible".to_string(),
    };
    debug!(peer = %id.remote, "graceful close not possible ({graceful}); using SOCK_DESTROY");
    match inventory.destroy(id) {
        Ok(()) => Ok(CloseOutcome::Closed(CloseMethod::Abortive)),
        Err(InventoryError::SockDiag(SockDiagError::NotFound)) => Ok(CloseOutcome::AlreadyClosed),
        Err(destroy) => Err(CloseError::Destroy { destroy, graceful }),
    }
}

/// Sends the FIN of a connection whose server was asked to close it ([`close_when`])
/// but did not: shuts down the write side of its socket, if it is still idle. Returns
/// whether a FIN was sent.
pub fn send_fin(inventory: &mut Inventory, connection: &Connection) -> Result<bool, CloseError> {
    let activity = inventory
        .recheck(&connection.socket.id)
        .map_err(CloseError::Recheck)?
        .map(|(_, activity)| activity);
    if activity != Some(Activity::Idle) {
        return Ok(false);
    }
    let Some(owner) = &connection.owner else {
        return Ok(false);
    };
    match borrow(owner, connection) {
        Ok(socket) => {
            shutdown(socket.as_fd(), Shutdown::Write).map_err(CloseError::Shutdown)?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Shuts a connection down in both directions, in flight or not: the deadline passed and
/// the user asked for `--force`. The server's next read returns EOF and its writes fail;
/// the client reads a FIN. Without a visible owner, the connection is reset at once.
pub fn force(
    inventory: &mut Inventory,
    connection: &Connection,
) -> Result<CloseMethod, CloseError> {
    if let Some(owner) = &connection.owner {
        if let Ok(socket) = borrow(owner, connection) {
            shutdown(socket.as_fd(), Shutdown::Both).map_err(CloseError::Shutdown)?;
            return Ok(CloseMethod::Graceful);
        }
    }
    reset(inventory, &connection.socket.id)?;
    Ok(CloseMethod::Abortive)
}

/// SOCK_DESTROY by exact identity; `Ok(false)` when the socket was already gone.
pub fn reset(inventory: &mut Inventory, id: &SocketId) -> Result<bool, CloseError> {
    match inventory.destroy(id) {
        Ok(()) => Ok(true),
        Err(InventoryError::SockDiag(SockDiagError::NotFound)) => Ok(false),
        Err(destroy) => Err(CloseError::Destroy {
            destroy,
            graceful: "not attempted".into(),
        }),
    }
}

/// The server's own descriptor of `connection`, borrowed from `owner` (`pidfd_getfd`,
/// identity checked).
fn borrow(owner: &SocketOwner, connection: &Connection) -> Result<OwnedFd, PidfdError> {
    if failpoint::hit(Point::Borrow, connection.socket.id.local.port())
        == Some(Fault::PermissionDenied)
    {
        return Err(PidfdError::GetFd {
            pid: owner.pid,
            fd: owner.fd,
            source: rustix::io::Errno::PERM,
        });
    }
    pidfd::duplicate_socket(owner.pid, owner.fd, &connection.socket)
}

fn describe(err: &PidfdError) -> String {
    if err.is_permission() {
        warn_once_about_ptrace(err);
        format!("{err} (no ptrace rights over the owner)")
    } else {
        err.to_string()
    }
}

/// A graceful close needs ptrace rights over the server; where Yama or an LSM blocks
/// them, every close becomes a reset. That is said once, loudly, with the way out;
/// each connection is then logged at debug level.
fn warn_once_about_ptrace(err: &PidfdError) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        warn!(
            "cannot borrow the server's sockets ({err}): connections are reset (RST) instead of \
             closed gracefully. {}",
            pidfd::PTRACE_RIGHTS
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{classify, sock_diag::TcpInfo};

    fn socket(data_segs_in: u32, data_segs_out: u32) -> TcpSocket {
        let info = TcpInfo {
            data_segs_in,
            data_segs_out,
            ..TcpInfo::default()
        };
        classify::tests::socket(0, 0, Some(info))
    }

    #[test]
    fn more_sent_since_the_scan_without_a_request_is_an_answer_still_written() {
        // A stream's next piece left between the scan and the close.
        assert!(answer_went_on(&socket(4, 5), &socket(4, 6)));
        // Nothing moved, or a new request and its answer: the answer is complete.
        assert!(!answer_went_on(&socket(4, 5), &socket(4, 5)));
        assert!(!answer_went_on(&socket(4, 5), &socket(5, 6)));
        // Without TCP_INFO nothing is known: no boundary.
        let mut blind = socket(4, 5);
        blind.info = None;
        assert!(answer_went_on(&blind, &socket(4, 5)));
    }
}

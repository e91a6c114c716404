//! What a drain did and what it left: the tally kept over the passes and the report
//! built from it at the end, the one both `drainctl` and the daemon hand to users.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::{
    close::CloseMethod,
    inventory::{Connection, PortInventory, SocketOwner},
};

/// A connection still open when the drain ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remaining {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The TCP state as `ss` names it (ESTAB, CLOSE-WAIT).
    pub state: String,
    /// "idle" or "in flight (why)".
    pub activity: String,
    /// Milliseconds since data last moved either way, from TCP_INFO.
    pub last_data_ms: Option<u32>,
    /// How long the drain has known it: a lower bound of its age, which the kernel does
    /// not report.
    pub tracked_ms: u64,
    pub owner_pid: Option<i32>,
    pub owner_command: Option<String>,
    /// The shortest pause its client was seen taking between a response and its next
    /// request (under 15 ms: back to back, no moment to close it); `None` when unknown.
    #[serde(default)]
    pub client_pause_ms: Option<u64>,
}

/// What a drain did and what it left.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainReport {
    pub port: u16,
    pub outcome: Outcome,
    pub elapsed_ms: u64,
    /// Connections closed gracefully: the server read EOF and closed them (or, if it did
    /// not within the close grace, the drain sent their FIN).
    pub closed_gracefully: u64,
    /// Connections closed with SOCK_DESTROY (RST): no ptrace rights over the owner.
    pub closed_abortively: u64,
    /// Of the closed ones, those that were busy and closed between a response and their
    /// client's next request (the rest were idle).
    #[serde(default)]
    pub closed_at_boundary: u64,
    /// Of those closed at a boundary, the ones closed abortively (for the daemon's
    /// metrics, which count closes by method and kind).
    #[serde(default)]
    pub closed_at_boundary_abortively: u64,
    /// Connections that closed without the drain closing them (finished requests,
    /// clients leaving).
    pub finished_on_their_own: u64,
    /// Responses (one per connection) into which the drain wrote `Connection: close`,
    /// so their HTTP/1.x clients closed after reading them ([`crate::close_http`]).
    #[serde(default)]
    pub connection_close_sent: u64,
    /// Plaintext websocket connections sent a close frame (1001, going away) after a
    /// message of their server, so their clients closed them.
    #[serde(default)]
    pub websocket_close_sent: u64,
    /// With `--force`: connections still open at the deadline that were shut down (FIN).
    pub forced_gracefully: u64,
    /// With `--force`: connections (and queued ones) reset after the force grace.
    pub forced_abortively: u64,
    /// New connections refused by the steering program during the drain.
    pub refused_connections: u64,
    /// New connections handed to a successor listener during the drain.
    pub steered_connections: u64,
    /// Connections on the port held by no process the drain can see (a successor in
    /// another PID namespace, a connection handed to an unrelated process): nothing
    /// proves they are the drain's, so they were left alone.
    #[serde(default)]
    pub unknown_owner: u64,
    /// Connections still waiting in the accept queue at the end.
    pub accept_queue: u32,
    pub remaining: Vec<Remaining>,
    /// Where the refusal of new connections is pinned, if it outlives this process.
    pub steering_pinned_at: Option<String>,
    /// Whether new connections are still refused after the drain returned.
    pub still_refusing: bool,
    /// The holder process that keeps the refusal where no bpffs outlives the drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_held_by: Option<u32>,
    /// While [`DrainReport::still_refusing`]: the refusal ends when the listener closes,
    /// and at the latest this long after the drain (`--keep-refusing`).
    #[serde(default)]
    pub refusal_ends_within_ms: u64,
    /// Successor listeners new connections go to instead, while the refusal lasts.
    #[serde(default)]
    pub successors: u32,
    /// Processes that also hold the drained listener and outlive the server (pid 1 with
    /// socket activation, a supervisor): the refusal then ends with the drain, so the
    /// next instance that inherits the listener is not refused.
    #[serde(default)]
    pub listener_kept_by: Vec<ProcessRef>,
}

/// A process, as reports name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: i32,
    pub command: String,
}

impl From<SocketOwner> for ProcessRef {
    fn from(owner: SocketOwner) -> Self {
        ProcessRef {
            pid: owner.pid,
            command: owner.command,
        }
    }
}

/// Counts over the whole drain, by socket cookie.
#[derive(Default)]
pub(super) struct Tally {
    first_seen: HashMap<u64, Instant>,
    /// When the drain asked each server to close a connection.
    pub(super) asked_at: HashMap<u64, Instant>,
    pub(super) closed_gracefully: u64,
    pub(super) closed_abortively: u64,
    pub(super) closed_at_boundary: u64,
    pub(super) closed_at_boundary_abortively: u64,
    pub(super) forced_gracefully: u64,
    pub(super) forced_abortively: u64,
    pub(super) steered: u64,
    pub(super) unknown_owner: u64,
    pub(super) connection_close_sent: u64,
    pub(super) websocket_close_sent: u64,
    /// What the drain learned of its connections' clients, for the report's remaining.
    pub(super) client_pauses: HashMap<u64, Duration>,
}

impl Tally {
    pub(super) fn observe(&mut self, snapshot: &PortInventory) {
        let now = Instant::now();
        for connection in &snapshot.connections {
            self.first_seen
                .entry(connection.socket.id.cookie)
                .or_insert(now);
        }
    }

    pub(super) fn closed(
        &mut self,
        connection: &Connection,
        method: CloseMethod,
        at_boundary: bool,
    ) {
        self.asked_at
            .insert(connection.socket.id.cookie, Instant::now());
        self.closed_at_boundary += u64::from(at_boundary);
        self.closed_at_boundary_abortively +=
            u64::from(at_boundary && method == CloseMethod::Abortive);
        match method {
            CloseMethod::Graceful => self.closed_gracefully += 1,
            CloseMethod::Abortive => self.closed_abortively += 1,
        }
    }

    pub(super) fn closed_total(&self) -> u64 {
        self.closed_gracefully + self.closed_abortively
    }

    /// The report of a drain that ended with `outcome`, `last` being its last scan.
    pub(super) fn report(
        &self,
        port: u16,
        outcome: Outcome,
        started: Instant,
        last: &PortInventory,
        refused_connections: u64,
        steering_pinned_at: Option<String>,
    ) -> DrainReport {
        let now = Instant::now();
        let open: HashSet<u64> = last
            .connections
            .iter()
            .map(|c| c.socket.id.cookie)
            .collect();
        let finished_on_their_own = self
            .first_seen
            .keys()
            .filter(|cookie| !open.contains(cookie) && !self.asked_at.contains_key(cookie))
            .count() as u64;
        let remaining = last
            .connections
            .iter()
            .map(|c| Remaining {
                peer: c.socket.id.remote,
                local: c.socket.id.local,
                state: c.socket.state.name().to_string(),
                activity: c.activity.to_string(),
                last_data_ms: c
                    .socket
                    .info
                    .map(|info| info.last_data_recv_ms.min(info.last_data_sent_ms)),
                tracked_ms: self
                    .first_seen
                    .get(&c.socket.id.cookie)
                    .map_or(0, |seen| (now - *seen).as_millis() as u64),
                owner_pid: c.owner.as_ref().map(|o| o.pid),
                owner_command: c.owner.as_ref().map(|o| o.command.clone()),
                client_pause_ms: self
                    .client_pauses
                    .get(&c.socket.id.cookie)
                    .map(|pause| pause.as_millis() as u64),
            })
            .collect();
        DrainReport {
            port,
            outcome,
            elapsed_ms: (now - started).as_millis() as u64,
            closed_gracefully: self.closed_gracefully,
            closed_abortively: self.closed_abortively,
            closed_at_boundary: self.closed_at_boundary,
            closed_at_boundary_abortively: self.closed_at_boundary_abortively,
            finished_on_their_own,
            connection_close_sent: self.connection_close_sent,
            websocket_close_sent: self.websocket_close_sent,
            forced_gracefully: self.forced_gracefully,
            forced_abortively: self.forced_abortively,
            refused_connections,
            steered_connections: self.steered,
            unknown_owner: self.unknown_owner,
            accept_queue: last.accept_queue(),
            remaining,
            still_refusing: steering_pinned_at.is_some(),
            steering_pinned_at,
            refusal_held_by: None,
            refusal_ends_within_ms: 0,
            listener_kept_by: Vec::new(),
            successors: 0,
        }
    }
}

//! Busy connections, closed between a response and their client's next request.
//!
//! Under continuous load a keep-alive connection is never idle, so closing only idle
//! connections closes nothing before the deadline. The drain keeps each of its
//! connections' [`Rhythm`] across passes and closes a busy one when a pass finds it
//! early in its client's pause ([`crate::inventory::rhythm`]); the close re-checks that on
//! a fresh read ([`When::AtBoundary`]). A client that never pauses (back to back) is left
//! to the deadline.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    close::When,
    inventory::{Connection, PortInventory, Rhythm},
};

/// The rhythms of a drain's connections, by socket cookie.
#[derive(Debug, Default)]
pub(super) struct Rhythms {
    by_cookie: HashMap<u64, Rhythm>,
    last_scan: Option<Instant>,
    /// The longest time between two scans so far (logged).
    max_scan_gap: Duration,
}

impl Rhythms {
    /// Learns from a scan taken at `scanned_at`; forgets connections no longer open.
    pub(super) fn observe(&mut self, snapshot: &PortInventory, scanned_at: Instant) {
        let scan_gap = self
            .last_scan
            .replace(scanned_at)
            .map_or(Duration::ZERO, |last| {
                scanned_at.saturating_duration_since(last)
            });
        self.max_scan_gap = self.max_scan_gap.max(scan_gap);
        let mut seen = HashMap::with_capacity(snapshot.connections.len());
        for connection in &snapshot.connections {
            let cookie = connection.socket.id.cookie;
            let mut rhythm = self.by_cookie.remove(&cookie).unwrap_or_default();
            rhythm.observe(
                &connection.socket,
                connection.activity,
                scanned_at,
                scan_gap,
            );
            seen.insert(cookie, rhythm);
        }
        self.by_cookie = seen;
        debug!(
            connections = self.by_cookie.len(),
            pause_known = self
                .by_cookie
                .values()
                .filter(|r| r.pause().is_some())
                .count(),
            interval_known = self
                .by_cookie
                .values()
                .filter(|r| r.interval().is_some())
                .count(),
            back_to_back = self.by_cookie.values().filter(|r| r.back_to_back()).count(),
            max_scan_gap_ms = self.max_scan_gap.as_millis(),
            "client rhythms"
        );
    }

    /// How `connection` may be closed now if it is busy and at a boundary.
    pub(super) fn at_boundary(&self, connection: &Connection) -> Option<When<'_>> {
        let rhythm = self.by_cookie.get(&connection.socket.id.cookie)?;
        rhythm
            .at_boundary(&connection.socket, connection.activity)
            .then_some(When::AtBoundary { rhythm })
    }

    /// What was learned of `connection`'s client, for the report.
    pub(super) fn of(&self, connection: &Connection) -> Option<&Rhythm> {
        self.by_cookie.get(&connection.socket.id.cookie)
    }
}

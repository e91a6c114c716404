//! Drains announce themselves so `drainctl status` can show them.
//!
//! A drain runs in whichever process started it (a `drainctl` or `drain-daemon`). Each
//! pass it rewrites a small JSON record at
//! `/run/drain-daemon/drains/netns-<inode>-<cookie>/port-<port>.json` (the namespace's
//! [`Identity`], so a namespace that gets a deleted one's inode does not read that one's
//! records as its own), and a last time with its
//! outcome. Records are written as root in a tree other users must not steer, so every
//! level is a root-only directory opened without following symlinks, and a record is
//! replaced atomically through a new file of an unpredictable name ([`SafeDir`]); one
//! is read without following a symlink too. Without root, `status` cannot read them. `status` reads the record and checks that
//! its process is still alive, so a killed drain shows as such instead of running
//! forever. A record names the listeners it drained (socket inodes): a record is only
//! about a listener that still exists. Announcing is
//! best effort: a drain never fails because it could not write.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{
    drain::{Outcome, Progress},
    netns::Identity,
    safe_dir::{DirError, SafeDir},
};

/// The system directory the records' tree starts in; the levels below are ours.
const RUN: &str = "/run";
const RECORD_DIRS: [&str; 2] = ["drain-daemon", "drains"];

/// Where a drain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Refusing new connections, closing idle ones, waiting for the rest.
    Draining,
    Drained,
    DeadlineReached,
    Cancelled,
    /// The drain stopped on an error (its report is the error message).
    Failed,
}

impl From<Outcome> for Phase {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Drained => Phase::Drained,
            Outcome::DeadlineReached => Phase::DeadlineReached,
            Outcome::Cancelled => Phase::Cancelled,
        }
    }
}

/// What a drain announces.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainRecord {
    /// The process running the drain.
    pub pid: u32,
    pub port: u16,
    /// Socket inodes of the drained listeners.
    pub listener_inodes: Vec<u64>,
    pub phase: Phase,
    pub started_unix_ms: u64,
    pub timeout_ms: u64,
    pub updated_unix_ms: u64,
    /// Idle connections closed so far.
    pub closed: u64,
    /// New connections refused so far.
    pub refused: u64,
    /// New connections handed to a successor so far (absent from older records).
    #[serde(default)]
    pub steered: u64,
    pub idle: usize,
    pub in_flight: usize,
    pub accept_queue: u32,
}

impl DrainRecord {
    /// Whether the record is about one of these listeners (socket inodes).
    pub fn concerns_any(&self, listener_inodes: &[u64]) -> bool {
        listener_inodes
            .iter()
            .any(|inode| self.listener_inodes.contains(inode))
    }

    /// Whether the process that wrote the record is still alive.
    pub fn process_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Keeps a drain's record up to date.
pub struct Announcer {
    netns: Identity,
    record: DrainRecord,
    /// Told once: a drain does not fail over its record.
    warned: bool,
}

impl Announcer {
    pub fn new(netns: Identity, port: u16, listener_inodes: Vec<u64>, timeout: Duration) -> Self {
        let now = unix_ms();
        Self {
            netns,
            warned: false,
            record: DrainRecord {
                pid: std::process::id(),
                port,
                listener_inodes,
                phase: Phase::Draining,
                started_unix_ms: now,
                timeout_ms: timeout.as_millis() as u64,
                updated_unix_ms: now,
                closed: 0,
                refused: 0,
                steered: 0,
                idle: 0,
                in_flight: 0,
                accept_queue: 0,
            },
        }
    }

    pub fn progress(&mut self, progress: &Progress) {
        self.record.closed = progress.closed;
        self.record.refused = progress.refused;
        self.record.steered = progress.steered;
        self.record.idle = progress.idle;
        self.record.in_flight = progress.in_flight;
        self.record.accept_queue = progress.accept_queue;
        self.write();
    }

    pub fn finish(&mut self, outcome: Outcome, refused: u64, steered: u64) {
        self.record.phase = outcome.into();
        self.record.refused = refused;
        self.record.steered = steered;
        if outcome == Outcome::Drained {
            self.record.idle = 0;
            self.record.in_flight = 0;
            self.record.accept_queue = 0;
        }
        self.write();
    }

    /// The drain stopped on an error.
    pub fn fail(&mut self, refused: u64, steered: u64) {
        self.record.phase = Phase::Failed;
        self.record.refused = refused;
        self.record.steered = steered;
        self.write();
    }

    fn write(&mut self) {
        self.record.updated_unix_ms = unix_ms();
        let written = serde_json::to_vec(&self.record)
            .map_err(std::io::Error::from)
            .map_err(|source| DirError::Io {
                call: "serialize",
                path: record_name(self.record.port).into(),
                source,
            })
            .and_then(|json| {
                record_dir(&self.netns, true)?
                    .write_atomically(&record_name(self.record.port), &json)
            });
        match written {
            Ok(()) => {}
            Err(err) if err.is_untrusted() && !self.warned => {
                warn!("not announcing the drain for drainctl status: {err}");
                self.warned = true;
            }
            Err(err) => debug!("cannot announce the drain: {err}"),
        }
    }
}

/// The last record of a drain of `port` in the network namespace `netns`.
pub fn read(netns: &Identity, port: u16) -> Option<DrainRecord> {
    let text = record_dir(netns, false)
        .ok()?
        .read(&record_name(port))
        .ok()?;
    serde_json::from_slice(&text).ok()
}

/// `/run/drain-daemon/drains/netns-<inode>-<cookie>`, opened level by level (created
/// when `create`).
fn record_dir(netns: &Identity, create: bool) -> Result<SafeDir, DirError> {
    let mut dir = SafeDir::open_system(Path::new(RUN))?;
    for name in RECORD_DIRS {
        dir = dir.child(name, create)?;
    }
    dir.child(&netns.dir_name(), create)
}

fn record_name(port: u16) -> String {
    format!("port-{port}.json")
}

/// Milliseconds since the Unix epoch, the time base of the records.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_documented_json() {
        let record = DrainRecord {
            pid: 42,
            port: 8080,
            listener_inodes: vec![7],
            phase: Phase::DeadlineReached,
            started_unix_ms: 1,
            timeout_ms: 30_000,
            updated_unix_ms: 2,
            closed: 3,
            refused: 4,
            steered: 5,
            idle: 0,
            in_flight: 1,
            accept_queue: 0,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""phase":"deadline_reached""#), "{json}");
        assert_eq!(serde_json::from_str::<DrainRecord>(&json).unwrap(), record);
        assert!(record.concerns_any(&[3, 7]));
        assert!(!record.concerns_any(&[3]));
    }

    #[test]
    fn a_dead_writer_is_detected() {
        let mut record = serde_json::from_str::<DrainRecord>(
            r#"{"pid":0,"port":1,"listener_inodes":[],"phase":"draining","started_unix_ms":0,"timeout_ms":0,
                "updated_unix_ms":0,"closed":0,"refused":0,"idle":0,"in_flight":0,"accept_queue":0}"#,
        )
        .unwrap();
        record.pid = std::process::id();
        assert!(record.process_alive());
        record.pid = u32::MAX - 1;
        assert!(!record.process_alive());
    }
}

//! Drains announce themselves so `drainctl status` can show them.
//!
//! A drain runs in whichever process started it (a `drainctl` or `drain-daemon`). As
//! the drain's observer ([`crate::drain::DrainObserver`]), each pass it rewrites a small JSON record at
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
    collections::HashSet,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{
    drain::{DrainObserver, Outcome, Progress},
    netns::{self, parse_canonical, Identity},
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

/// The record follows the drain: `Draining` with each pass's counts, then how it ended.
impl DrainObserver for Announcer {
    fn progress(&mut self, progress: &Progress) {
        self.record.closed = progress.closed;
        self.record.refused = progress.refused;
        self.record.steered = progress.steered;
        self.record.idle = progress.idle;
        self.record.in_flight = progress.in_flight;
        self.record.accept_queue = progress.accept_queue;
        self.write();
    }

    fn finished(&mut self, outcome: Outcome, refused: u64, steered: u64) {
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

    fn failed(&mut self, refused: u64, steered: u64) {
        self.record.phase = Phase::Failed;
        self.record.refused = refused;
        self.record.steered = steered;
        self.write();
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

/// Removes the records no drain and no listener stands behind, in every namespace's
/// directory, and the directories left empty. A record goes when its namespace has no
/// thread (every drain runs on a thread in the namespace it drains, so none is being
/// written there) and none of its listeners is held by any process: a namespace that is
/// gone had its sockets closed with it, and a record is only about a listener that still
/// exists. The namespace's liveness is not needed for that, so a namespace held only by
/// a mount or a descriptor keeps its records while its listeners are open and loses them
/// once they are closed. A thread in a namespace with the record's inode counts only if
/// its namespace has the record's cookie too (the kernel gives a deleted namespace's
/// inode to the next one it makes). Entries this program does not make are left alone.
pub fn sweep_stale() {
    let drains = match drains_dir(false) {
        Ok(dir) => dir,
        Err(err) if err.is_not_found() => return,
        Err(err) => return warn!("not sweeping stale drain records: {err}"),
    };
    let namespaces: Vec<(String, Identity)> = match drains.names() {
        Ok(names) => names
            .into_iter()
            .filter_map(|name| Some((Identity::from_dir_name(&name)?, name)))
            .map(|(identity, name)| (name, identity))
            .collect(),
        Err(err) => return warn!("not sweeping stale drain records: {err}"),
    };
    // Read after the listing: a drain entering a namespace from here on writes about
    // listeners a process holds, which stay.
    let occupied = netns::namespaces_of_threads();
    let mut unoccupied = Vec::new();
    for (name, identity) in namespaces {
        if occupied
            .get(&identity.inode)
            .is_some_and(|thread| !another_namespace_at(thread, identity))
        {
            continue;
        }
        match drains.child(&name, false) {
            Ok(dir) => unoccupied.push((name, dir)),
            Err(err) => warn!("not sweeping stale drain records: {err}"),
        }
    }
    let mut records = Vec::new();
    for (_, dir) in &unoccupied {
        for file in dir.names().unwrap_or_default() {
            if is_temporary(&file) {
                // Left by a writer killed before its rename: nobody writes here now.
                let _ = dir.unlink(&file);
                continue;
            }
            if port_of_record(&file).is_none() {
                continue;
            }
            let parsed = dir
                .read(&file)
                .ok()
                .and_then(|text| serde_json::from_slice::<DrainRecord>(&text).ok());
            match parsed {
                Some(record) => records.push((dir, file, record.listener_inodes)),
                None => debug!(name = file, "leaving alone a record that does not parse"),
            }
        }
    }
    let listeners = records
        .iter()
        .flat_map(|(_, _, inodes)| inodes.iter().copied())
        .collect();
    let held = crate::inventory::owners::held_by_any_process(&listeners);
    for (dir, file, inodes) in &records {
        if !inodes.iter().any(|inode| held.contains(inode)) {
            debug!(dir = %dir.path().display(), record = file, "removing a stale drain record");
            if let Err(err) = dir.unlink(file) {
                warn!("cannot remove a stale drain record: {err}");
            }
        }
    }
    for (name, _) in &unoccupied {
        // Fails while records remain: that is intended.
        let _ = drains.remove_dir(name);
    }
}

/// The network namespaces (inodes) that have a record directory: what drains left there
/// and no sweep has removed yet. No tree, no namespace.
pub fn namespaces_with_records() -> Result<HashSet<u64>, DirError> {
    let names = match drains_dir(false) {
        Ok(dir) => dir.names()?,
        Err(err) if err.is_not_found() => return Ok(HashSet::new()),
        Err(err) => return Err(err),
    };
    Ok(names
        .iter()
        .filter_map(|name| Identity::from_dir_name(name))
        .map(|identity| identity.inode)
        .collect())
}

/// Whether the thread's namespace at `thread` is provably not `identity` but one that
/// got its inode after it was deleted: live namespaces never share an inode, and the
/// cookie tells them apart. Without a cookie (or the namespace) nothing is proven.
fn another_namespace_at(thread: &Path, identity: Identity) -> bool {
    match netns::identity_at(thread, identity.inode) {
        Ok(Some(found)) => identity.cookie.is_some() && found.cookie.is_some() && found != identity,
        Ok(None) | Err(_) => false,
    }
}

/// `/run/drain-daemon/drains/netns-<inode>-<cookie>`, opened level by level (created
/// when `create`).
fn record_dir(netns: &Identity, create: bool) -> Result<SafeDir, DirError> {
    drains_dir(create)?.child(&netns.dir_name(), create)
}

/// `/run/drain-daemon/drains`, opened level by level (created when `create`).
fn drains_dir(create: bool) -> Result<SafeDir, DirError> {
    let mut dir = SafeDir::open_system(Path::new(RUN))?;
    for name in RECORD_DIRS {
        dir = dir.child(name, create)?;
    }
    Ok(dir)
}

fn record_name(port: u16) -> String {
    format!("port-{port}.json")
}

/// The port a record named `port-<port>.json` is for (canonical spelling only).
fn port_of_record(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("port-")?.strip_suffix(".json")?;
    parse_canonical(digits).and_then(|port| u16::try_from(port).ok())
}

/// Whether `name` is a record being written: `.<record>.<16 hex digits>`
/// ([`SafeDir::write_atomically`]).
fn is_temporary(name: &str) -> bool {
    let Some((record, suffix)) = name
        .strip_prefix('.')
        .and_then(|rest| rest.rsplit_once('.'))
    else {
        return false;
    };
    port_of_record(record).is_some()
        && suffix.len() == 16
        && suffix.bytes().all(|b| b.is_ascii_hexdigit())
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
    fn only_record_names_this_program_makes_are_swept() {
        assert_eq!(port_of_record("port-8080.json"), Some(8080));
        assert!(is_temporary(".port-8080.json.0123456789abcdef"));
        for name in [
            "port-08080.json",
            "port-8080",
            "port-65536.json",
            "port-8080.json.x",
        ] {
            assert_eq!(port_of_record(name), None, "{name}");
        }
        for name in [
            "port-8080.json",
            ".port-8080.json.0123",
            ".port-8080.json.0123456789abcdeg",
            ".other.0123456789abcdef",
        ] {
            assert!(!is_temporary(name), "{name}");
        }
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

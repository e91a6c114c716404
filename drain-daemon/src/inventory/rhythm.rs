//! When a busy connection's next request is due: its rhythm, learned across scans, so a
//! drain can close it between a response and that request.
//!
//! Under continuous load no keep-alive connection is quiet for the quiet period
//! ([`classify`](mod@super::classify), rule 5), and neither is a websocket exchanging heartbeats: a
//! drain that closes only idle connections closes none of them, and the stop that
//! follows it cuts them all. Each client has a rhythm, though: a response, a pause, the
//! next request. Closed right after a response, while most of the pause is still to
//! come, a connection loses nothing: the server reads EOF and closes, and the client
//! reads the FIN before it has a request to send. Closed at a random moment, a close
//! races the next request whenever it lands near the end of the pause.
//!
//! Every scan's TCP_INFO tells, in milliseconds, how long ago data last arrived (the
//! latest request) and last left (the latest response). Two kinds of samples follow:
//!
//! - **Pause**: a scan that finds a request arrived after the latest response (being
//!   served or not yet read) on a connection that answered before (`data_segs_out > 0`)
//!   measures the client's pause before that request, `last_data_sent -
//!   last_data_recv`. A back-to-back client pauses 0 ms.
//! - **Interval**: the arrival time of the latest request (scan time minus
//!   `last_data_recv`) changes between scans by the client's request interval, provided
//!   no request came and went unseen between two scans. That holds when the interval is
//!   longer than the gaps between the scans, and the samples prove it when the smallest
//!   of them is at least twice the longest gap between the scans it spans: with a
//!   shorter interval every change seen would be under the gap plus the interval. Each
//!   sample is judged by its own scans, so one slow pass on a loaded host (measured
//!   here: 291 ms against the usual 100) does not keep every later sample from proving
//!   the rhythm, as a drain-wide longest gap did. Heartbeats (a websocket ping every
//!   0.5 s, answered in microseconds) show up this way only: their requests are never
//!   caught being served.
//!
//! A response written in pieces (a stream, a page flushed as it is rendered) looks
//! answered between two pieces. A scan that finds more of it sent, with no new request,
//! after an earlier scan had found it answered marks it **streamed**: the connection is
//! not at a boundary again before its next request. The close re-checks the same on its
//! fresh read (`crate::close`): data sent since the scan without a request is a response
//! still being written. Only the first piece's gap, before any scan saw more follow, is
//! not told from a complete answer.
//!
//! A connection whose requests are all answered and delivered (rules 1 to 4 of
//! `classify` do not hold) is **at a boundary** when its next request is due, by the
//! earlier of the two estimates, no sooner than a safety margin from now: a quarter of
//! the estimate and at least [`MIN_MARGIN`], so a client whose pause jitters by a
//! quarter is still safe and the server has time to read EOF and close. An estimate
//! needs [`MIN_SAMPLES`] samples, and it is the smallest sample: a client that once
//! paused less is judged by that. A client that never pauses is never at a boundary.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::{
    classify::{Activity, Busy},
    sock_diag::TcpSocket,
};

/// Samples an estimate needs before the drain acts on it.
pub const MIN_SAMPLES: u32 = 2;
/// The least time left before the next request for a close at a boundary.
pub const MIN_MARGIN: Duration = Duration::from_millis(15);
/// Request arrival times within this of each other are one request: the stamps have
/// millisecond resolution, and the sockets of a scan are read over a few milliseconds.
const SAME_ARRIVAL: Duration = Duration::from_millis(5);

/// What the drain learned about one connection's client across scans.
#[derive(Clone, Debug, Default)]
pub struct Rhythm {
    pauses: Samples,
    intervals: Samples,
    /// Whether the smallest interval sample was at least twice the longest gap between
    /// the scans it spans ([module documentation](self)).
    interval_proven: bool,
    /// The longest gap between scans since the latest request arrival was first seen.
    gap_since_arrival: Duration,
    last_arrival: Option<Instant>,
    /// The latest request's arrival and the data segments sent when a scan first found
    /// it answered.
    answered_with: Option<(Instant, u32)>,
    /// The arrival of a request whose answer went on after a scan had found it answered:
    /// a streamed response, never at a boundary until the next request.
    streamed: Option<Instant>,
}

/// The smallest of a set of millisecond samples, and how many there were.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Samples {
    count: u32,
    min_ms: u32,
}

impl Samples {
    fn add(&mut self, ms: u32) {
        self.min_ms = if self.count == 0 {
            ms
        } else {
            self.min_ms.min(ms)
        };
        self.count = self.count.saturating_add(1);
    }

    fn estimate(self) -> Option<u32> {
        (self.count >= MIN_SAMPLES).then_some(self.min_ms)
    }
}

impl Rhythm {
    /// Learns from one scan of the connection, taken at `scanned_at`, `scan_gap` after
    /// the scan before it.
    pub fn observe(
        &mut self,
        socket: &TcpSocket,
        activity: Activity,
        scanned_at: Instant,
        scan_gap: Duration,
    ) {
        self.gap_since_arrival = self.gap_since_arrival.max(scan_gap);
        let Some(info) = socket.info else {
            return;
        };
        let request_after_response = matches!(
            activity,
            Activity::InFlight(Busy::RequestBeingServed | Busy::UnreadRequest { .. })
        ) && info.last_data_recv_ms <= info.last_data_sent_ms;
        if request_after_response && info.data_segs_out > 0 {
            self.pauses
                .add(info.last_data_sent_ms - info.last_data_recv_ms);
        }
        if info.data_segs_in == 0 {
            return;
        }
        let Some(arrival) =
            scanned_at.checked_sub(Duration::from_millis(info.last_data_recv_ms.into()))
        else {
            return;
        };
        match self.last_arrival {
            Some(last) if arrival <= last + SAME_ARRIVAL && last <= arrival + SAME_ARRIVAL => {}
            Some(last) if arrival > last => {
                let interval: u32 = (arrival - last).as_millis().try_into().unwrap_or(u32::MAX);
                let proven = u128::from(interval) >= 2 * self.gap_since_arrival.as_millis();
                if self.intervals.count == 0 || interval < self.intervals.min_ms {
                    self.interval_proven = proven;
                } else if interval == self.intervals.min_ms {
                    self.interval_proven |= proven;
                }
                self.intervals.add(interval);
                self.last_arrival = Some(arrival);
                self.gap_since_arrival = Duration::ZERO;
            }
            _ => {
                self.last_arrival = Some(arrival);
                self.gap_since_arrival = Duration::ZERO;
            }
        }
        if let (Some(arrival), true) = (self.last_arrival, answered(activity)) {
            match self.answered_with {
                Some((answered, segs_out)) if answered == arrival => {
                    if info.data_segs_out > segs_out {
                        self.streamed = Some(arrival);
                    }
                }
                _ => self.answered_with = Some((arrival, info.data_segs_out)),
            }
        }
    }

    /// Whether the latest request's answer is streamed: the server sent more of it after
    /// a scan had found it answered (a response written in pieces looks answered
    /// between two of them).
    pub fn streaming(&self) -> bool {
        self.streamed.is_some() && self.streamed == self.last_arrival
    }

    /// How long until the connection's next request is due, by the earlier estimate,
    /// and that estimate; `None` unless the connection has answered everything and its
    /// rhythm is known. The interval samples count only when the smallest of them is at
    /// least twice the longest gap between the scans it spans.
    pub fn next_request_due(
        &self,
        socket: &TcpSocket,
        activity: Activity,
    ) -> Option<(Duration, Duration)> {
        if !answered(activity) {
            return None;
        }
        let info = socket.info?;
        let after_pause = self
            .pauses
            .estimate()
            .map(|pause| (i64::from(pause) - i64::from(info.last_data_sent_ms), pause));
        let proven_intervals = self.intervals.estimate().filter(|_| self.interval_proven);
        let after_interval = proven_intervals.map(|interval| {
            (
                i64::from(interval) - i64::from(info.last_data_recv_ms),
                interval,
            )
        });
        let (due_ms, estimate_ms) = match (after_pause, after_interval) {
            (Some(pause), Some(interval)) => pause.min(interval),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => return None,
        };
        let due = Duration::from_millis(due_ms.max(0).unsigned_abs());
        Some((due, Duration::from_millis(estimate_ms.into())))
    }

    /// Whether the connection is between a response and its next request with enough
    /// time left to close it ([module documentation](self)).
    pub fn at_boundary(&self, socket: &TcpSocket, activity: Activity) -> bool {
        !self.streaming()
            && self
                .next_request_due(socket, activity)
                .is_some_and(|(due, estimate)| due >= (estimate / 4).max(MIN_MARGIN))
    }

    /// The client's shortest request interval, once known (proven or not).
    pub fn interval(&self) -> Option<Duration> {
        self.intervals
            .estimate()
            .map(|ms| Duration::from_millis(ms.into()))
    }

    /// The client's smallest pause before a request, once known.
    pub fn pause(&self) -> Option<Duration> {
        self.pauses
            .estimate()
            .map(|ms| Duration::from_millis(ms.into()))
    }

    /// Whether the client was seen sending a request with no pause after a response
    /// (back to back): no boundary can be found on this connection.
    pub fn back_to_back(&self) -> bool {
        self.pause().is_some_and(pauses_too_briefly)
    }
}

/// Whether a client pausing `pause` between a response and its next request leaves no
/// moment to close its connection (it sends back to back).
pub fn pauses_too_briefly(pause: Duration) -> bool {
    pause < MIN_MARGIN
}

/// Everything received was answered and delivered: only the quiet period keeps the
/// connection from counting as idle.
fn answered(activity: Activity) -> bool {
    matches!(
        activity,
        Activity::Idle | Activity::InFlight(Busy::RecentlyActive { .. })
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::inventory::{
        classify::{self, classify},
        sock_diag::TcpInfo,
    };

    const QUIET: Duration = Duration::from_secs(1);
    const SCAN_GAP: Duration = Duration::from_millis(120);

    /// A connection whose latest request arrived `recv_ms` ago and latest response left
    /// `sent_ms` ago, after `requests` requests and `responses` responses.
    pub(crate) fn socket(recv_ms: u32, sent_ms: u32, requests: u32, responses: u32) -> TcpSocket {
        let info = TcpInfo {
            last_data_recv_ms: recv_ms,
            last_data_sent_ms: sent_ms,
            data_segs_in: requests,
            data_segs_out: responses,
            ..TcpInfo::default()
        };
        classify::tests::socket(0, 0, Some(info))
    }

    /// A scan `SCAN_GAP` after the one before.
    fn observe(rhythm: &mut Rhythm, socket: &TcpSocket, at: Instant) {
        rhythm.observe(socket, classify(socket, QUIET), at, SCAN_GAP);
    }

    fn at_boundary(rhythm: &Rhythm, socket: &TcpSocket) -> bool {
        rhythm.at_boundary(socket, classify(socket, QUIET))
    }

    #[test]
    fn a_paced_client_is_at_a_boundary_early_in_its_pause_only() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        // Two requests caught being served, each 100 ms after the previous response.
        observe(&mut rhythm, &socket(30, 130, 2, 1), t0);
        observe(
            &mut rhythm,
            &socket(10, 110, 3, 2),
            t0 + Duration::from_millis(200),
        );
        assert_eq!(rhythm.pause(), Some(Duration::from_millis(100)));
        // Answered 5 ms ago: the next request is due in about 95 ms.
        assert!(at_boundary(&rhythm, &socket(105, 5, 3, 3)));
        // Answered 80 ms ago: 20 ms left, under a quarter of the pause.
        assert!(!at_boundary(&rhythm, &socket(180, 80, 3, 3)));
        // Still being served: never.
        assert!(!at_boundary(&rhythm, &socket(10, 110, 3, 2)));
    }

    #[test]
    fn one_sample_is_not_a_rhythm() {
        let mut rhythm = Rhythm::default();
        observe(&mut rhythm, &socket(30, 130, 2, 1), Instant::now());
        assert!(!at_boundary(&rhythm, &socket(105, 5, 2, 2)));
    }

    #[test]
    fn a_back_to_back_client_is_never_at_a_boundary() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        // The next request arrives in the millisecond its previous answer left.
        observe(&mut rhythm, &socket(40, 40, 5, 4), t0);
        observe(
            &mut rhythm,
            &socket(20, 20, 9, 8),
            t0 + Duration::from_millis(100),
        );
        assert!(rhythm.back_to_back());
        assert!(!at_boundary(&rhythm, &socket(1, 0, 9, 9)));
    }

    #[test]
    fn the_first_request_of_a_fresh_connection_is_no_pause() {
        // The kernel stamps the send time at connection setup: 500 ms "pause" that is not.
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        observe(&mut rhythm, &socket(10, 510, 1, 0), t0);
        observe(
            &mut rhythm,
            &socket(20, 520, 1, 0),
            t0 + Duration::from_millis(10),
        );
        assert_eq!(rhythm.pause(), None);
    }

    #[test]
    fn heartbeats_are_learned_from_their_intervals() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        // A ping every 500 ms answered at once: never caught being served. Scans every
        // 100 ms see each ping's arrival.
        for scan in 0..16u32 {
            let now_ms = scan * 100 + 30;
            let since_ping = now_ms % 500;
            let heartbeat = socket(since_ping, since_ping, 1 + now_ms / 500, 1 + now_ms / 500);
            observe(
                &mut rhythm,
                &heartbeat,
                t0 + Duration::from_millis(now_ms.into()),
            );
        }
        assert_eq!(rhythm.pause(), None);
        // 30 ms after a ping: the next is due in 470 ms.
        assert!(at_boundary(&rhythm, &socket(30, 30, 4, 4)));
        // 430 ms after: 70 ms left, under a quarter of 500.
        assert!(!at_boundary(&rhythm, &socket(430, 430, 4, 4)));
    }

    #[test]
    fn a_streamed_response_after_a_learned_rhythm_is_no_boundary_until_the_next_request() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Short answers after 100 ms pauses: learned.
        observe(&mut rhythm, &socket(30, 130, 2, 1), at(0));
        observe(&mut rhythm, &socket(10, 110, 3, 2), at(200));
        // The next request (arrived at 400 ms) gets a stream: the first scan finds it
        // answered a moment ago, as a short answer would be...
        observe(&mut rhythm, &socket(20, 10, 4, 4), at(420));
        assert!(!rhythm.streaming());
        // ...the next finds more of it sent since, and no new request.
        let between_chunks = socket(120, 10, 4, 5);
        observe(&mut rhythm, &between_chunks, at(520));
        assert!(rhythm.streaming());
        assert!(!at_boundary(&rhythm, &between_chunks));
        observe(&mut rhythm, &socket(220, 10, 4, 6), at(620));
        assert!(rhythm.streaming());
        // The stream ended; the client's next request (at 900 ms) gets a short answer.
        let after_next = socket(10, 5, 5, 7);
        observe(&mut rhythm, &after_next, at(910));
        assert!(!rhythm.streaming());
        assert!(at_boundary(&rhythm, &after_next));
    }

    #[test]
    fn one_slow_scan_does_not_keep_heartbeats_from_being_learned_afterwards() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        // A ping every 500 ms; scans every 100 ms but for one 300 ms gap (a slow pass on
        // a loaded host) early on: the interval it spans proves nothing, the later ones do.
        let mut now_ms = 30u32;
        for scan in 0..16u32 {
            let gap = if scan == 2 { 300 } else { 100 };
            now_ms += gap;
            let since_ping = now_ms % 500;
            let heartbeat = socket(since_ping, since_ping, 1 + now_ms / 500, 1 + now_ms / 500);
            rhythm.observe(
                &heartbeat,
                classify(&heartbeat, QUIET),
                t0 + Duration::from_millis(now_ms.into()),
                Duration::from_millis(gap.into()),
            );
        }
        assert!(at_boundary(&rhythm, &socket(30, 30, 9, 9)));
    }

    #[test]
    fn intervals_shorter_than_twice_the_scan_gap_prove_nothing() {
        let mut rhythm = Rhythm::default();
        let t0 = Instant::now();
        // Requests every 50 ms, scans every 100 ms: each scan sees a request 100 ms
        // after the one before, a 100 ms "interval" that is really two.
        for scan in 0..6u32 {
            let heartbeat = socket(10, 10, 1 + scan * 2, 1 + scan * 2);
            observe(
                &mut rhythm,
                &heartbeat,
                t0 + Duration::from_millis((scan * 100).into()),
            );
        }
        assert!(!at_boundary(&rhythm, &socket(5, 5, 13, 13)));
    }
}

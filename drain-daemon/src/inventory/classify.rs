//! Idle or in flight: the one judgement the drain makes about each connection.
//!
//! A drain may close an idle keep-alive connection (the client reconnects elsewhere and
//! loses nothing) but must leave a connection carrying a request alone until it is
//! answered. The server's kernel socket tells which, without knowing the protocol:
//!
//! 1. **Unread request**: bytes wait in the receive queue that the server has not read.
//! 2. **Undelivered response**: bytes the server wrote are not yet acknowledged by the
//!    peer, or not yet sent (send queue, `tcpi_unacked`, `tcpi_notsent_bytes`).
//! 3. **Request being served**: data arrived more recently than data was last sent
//!    (`tcpi_last_data_recv` < `tcpi_last_data_sent`, both "milliseconds ago"). The
//!    kernel stamps the send time when the connection is established, so a fresh
//!    connection whose first request was read but not answered counts too.
//! 4. **Same millisecond**: the two stamps are equal (they have millisecond, on some
//!    kernels jiffy, resolution: on loopback or a fast LAN a keep-alive client's next
//!    request often lands in the millisecond its previous answer left) and more data
//!    segments were received than sent (`tcpi_data_segs_in > tcpi_data_segs_out`): a
//!    request has no answer yet. Measured here with `ss -tin`, one idle and one busy
//!    keep-alive connection, 1 s after: both `lastsnd:1008 lastrcv:1008`; idle
//!    `data_segs_in:1 data_segs_out:1`, busy `data_segs_in:2 data_segs_out:1`. This
//!    tie-break assumes an answer is not split over more data segments than its request
//!    (one write of under one MSS); a server that answers in several segments can hide
//!    a request that arrived in the same millisecond as its previous answer.
//! 5. **Recently active**: data moved either way less than the quiet period ago. From
//!    the socket, a response written in pieces (a stream, a slow backend) looks answered
//!    between two pieces; so does a keep-alive connection whose client is about to send
//!    its next request. Waiting until the connection has been quiet for a while keeps
//!    both alone. The default (`drainctl drain --quiet-period`, 1 s) is ten times the
//!    gap between writes of a streamed response in the tests (100 ms), and twice the
//!    request interval of the measured keep-alive load (docs/closing.md, "Idle or in flight"):
//!    there it leaves only the connections the client's pool had not used for a
//!    second, where shorter periods also catch connections between two requests.
//! 6. **Unknown**: no TCP_INFO was reported; the drain never closes what it cannot see.
//!
//! Otherwise the connection is **idle**: everything received was answered and delivered,
//! or nothing was ever received, and nothing moved for the quiet period. See `../shared/PLATFORM.md` for the TCP_INFO values
//! measured in each case.

use std::time::Duration;

use super::sock_diag::TcpSocket;

/// What a connection is doing, as far as its server-side socket tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    Idle,
    InFlight(Busy),
}

/// Why a connection counts as in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Bytes received that the server has not read yet.
    UnreadRequest { bytes: u32 },
    /// Bytes the server wrote that the peer has not acknowledged yet.
    UndeliveredResponse { bytes: u32 },
    /// A request was read and its answer has not been sent.
    RequestBeingServed,
    /// Data moved this many milliseconds ago, less than the quiet period.
    RecentlyActive { ms: u32 },
    /// No TCP_INFO: the state cannot be judged.
    Unknown,
}

impl Activity {
    pub fn is_idle(self) -> bool {
        self == Activity::Idle
    }
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Activity::Idle => f.write_str("idle"),
            Activity::InFlight(busy) => write!(f, "in flight ({busy})"),
        }
    }
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Busy::UnreadRequest { bytes } => write!(f, "{bytes} bytes received, not yet read"),
            Busy::UndeliveredResponse { bytes } => {
                write!(f, "{bytes} bytes sent, not yet acknowledged")
            }
            Busy::RequestBeingServed => f.write_str("request read, not yet answered"),
            Busy::RecentlyActive { ms } => write!(f, "data moved {ms} ms ago"),
            Busy::Unknown => f.write_str("no TCP_INFO"),
        }
    }
}

/// Classifies a connection by the rules in this module's documentation.
pub fn classify(socket: &TcpSocket, quiet_period: Duration) -> Activity {
    if socket.recv_queue > 0 {
        return Activity::InFlight(Busy::UnreadRequest {
            bytes: socket.recv_queue,
        });
    }
    let Some(info) = socket.info else {
        return Activity::InFlight(Busy::Unknown);
    };
    // The send queue counts unacknowledged and unsent bytes; `unacked` (segments) and
    // `notsent_bytes` are the same facts from TCP_INFO, taken too in case one lags.
    if socket.send_queue > 0 || info.notsent_bytes > 0 || info.unacked > 0 {
        let bytes = socket.send_queue.max(info.notsent_bytes);
        return Activity::InFlight(Busy::UndeliveredResponse { bytes });
    }
    let received_after_last_send = info.last_data_recv_ms < info.last_data_sent_ms;
    let same_millisecond_unanswered =
        info.last_data_recv_ms == info.last_data_sent_ms && info.data_segs_in > info.data_segs_out;
    if received_after_last_send || same_millisecond_unanswered {
        return Activity::InFlight(Busy::RequestBeingServed);
    }
    let quiet_for = info.last_data_recv_ms.min(info.last_data_sent_ms);
    if u128::from(quiet_for) < quiet_period.as_millis() {
        return Activity::InFlight(Busy::RecentlyActive { ms: quiet_for });
    }
    Activity::Idle
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::inventory::sock_diag::{SocketId, TcpInfo, TcpState};

    /// Below every stamp in these fixtures, so only rules 1 to 4 and 6 decide.
    const QUIET: Duration = Duration::from_millis(100);

    fn classify(socket: &TcpSocket) -> Activity {
        super::classify(socket, QUIET)
    }

    /// An established server-side connection with these queues and TCP_INFO.
    pub(crate) fn socket(recv_queue: u32, send_queue: u32, info: Option<TcpInfo>) -> TcpSocket {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        TcpSocket {
            id: SocketId {
                local,
                remote,
                cookie: 1,
                interface: 0,
            },
            state: TcpState::Established,
            recv_queue,
            send_queue,
            inode: 1,
            uid: 0,
            info,
        }
    }

    /// The TCP_INFO of PLATFORM.md's "idle keep-alive, one request answered" row.
    fn answered() -> TcpInfo {
        TcpInfo {
            last_data_sent_ms: 2360,
            last_data_recv_ms: 2412,
            bytes_received: 18,
            bytes_acked: 19,
            bytes_sent: 18,
            data_segs_in: 1,
            data_segs_out: 1,
            ..TcpInfo::default()
        }
    }

    #[test]
    fn answered_keep_alive_is_idle() {
        assert_eq!(classify(&socket(0, 0, Some(answered()))), Activity::Idle);
    }

    #[test]
    fn fresh_connection_without_data_is_idle() {
        let info = TcpInfo {
            last_data_sent_ms: 1008,
            last_data_recv_ms: 1008,
            ..TcpInfo::default()
        };
        assert_eq!(classify(&socket(0, 0, Some(info))), Activity::Idle);
    }

    #[test]
    fn unread_request_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 2360,
            last_data_recv_ms: 2060,
            bytes_received: 18,
            ..TcpInfo::default()
        };
        assert_eq!(
            classify(&socket(18, 0, Some(info))),
            Activity::InFlight(Busy::UnreadRequest { bytes: 18 })
        );
    }

    #[test]
    fn unread_bytes_win_even_without_tcp_info() {
        assert_eq!(
            classify(&socket(5, 0, None)),
            Activity::InFlight(Busy::UnreadRequest { bytes: 5 })
        );
    }

    #[test]
    fn read_but_unanswered_request_on_fresh_connection_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 2060,
            last_data_recv_ms: 1760,
            bytes_received: 18,
            ..TcpInfo::default()
        };
        assert_eq!(
            classify(&socket(0, 0, Some(info))),
            Activity::InFlight(Busy::RequestBeingServed)
        );
    }

    #[test]
    fn second_request_on_reused_connection_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 1360,
            last_data_recv_ms: 1060,
            bytes_received: 37,
            bytes_acked: 19,
            bytes_sent: 18,
            ..TcpInfo::default()
        };
        assert_eq!(
            classify(&socket(0, 0, Some(info))),
            Activity::InFlight(Busy::RequestBeingServed)
        );
    }

    #[test]
    fn first_request_in_the_handshake_millisecond_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 500,
            last_data_recv_ms: 500,
            bytes_received: 18,
            data_segs_in: 1,
            ..TcpInfo::default()
        };
        assert_eq!(
            classify(&socket(0, 0, Some(info))),
            Activity::InFlight(Busy::RequestBeingServed)
        );
    }

    /// The busy connection measured with `ss -tin` (see the module documentation).
    #[test]
    fn next_request_in_the_millisecond_of_the_last_answer_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 1008,
            last_data_recv_ms: 1008,
            bytes_received: 41,
            bytes_acked: 41,
            bytes_sent: 41,
            data_segs_in: 2,
            data_segs_out: 1,
            ..TcpInfo::default()
        };
        assert_eq!(
            classify(&socket(0, 0, Some(info))),
            Activity::InFlight(Busy::RequestBeingServed)
        );
    }

    #[test]
    fn answer_in_the_same_millisecond_is_idle() {
        let info = TcpInfo {
            last_data_sent_ms: 500,
            last_data_recv_ms: 500,
            ..answered()
        };
        assert_eq!(classify(&socket(0, 0, Some(info))), Activity::Idle);
    }

    #[test]
    fn unacknowledged_response_is_in_flight() {
        assert_eq!(
            classify(&socket(0, 4096, Some(answered()))),
            Activity::InFlight(Busy::UndeliveredResponse { bytes: 4096 })
        );
    }

    #[test]
    fn unsent_bytes_are_in_flight() {
        let info = TcpInfo {
            notsent_bytes: 100,
            ..answered()
        };
        assert_eq!(
            classify(&socket(0, 0, Some(info))),
            Activity::InFlight(Busy::UndeliveredResponse { bytes: 100 })
        );
    }

    #[test]
    fn segments_in_flight_are_in_flight() {
        let info = TcpInfo {
            unacked: 2,
            ..answered()
        };
        assert!(!classify(&socket(0, 0, Some(info))).is_idle());
    }

    #[test]
    fn data_within_the_quiet_period_is_in_flight() {
        let info = TcpInfo {
            last_data_sent_ms: 80,
            last_data_recv_ms: 2412,
            ..answered()
        };
        let socket = socket(0, 0, Some(info));
        assert_eq!(
            super::classify(&socket, Duration::from_millis(100)),
            Activity::InFlight(Busy::RecentlyActive { ms: 80 })
        );
        assert_eq!(
            super::classify(&socket, Duration::from_millis(80)),
            Activity::Idle
        );
        assert_eq!(super::classify(&socket, Duration::ZERO), Activity::Idle);
    }

    #[test]
    fn a_fresh_silent_connection_waits_for_the_quiet_period() {
        let info = TcpInfo {
            last_data_sent_ms: 30,
            last_data_recv_ms: 30,
            ..TcpInfo::default()
        };
        assert!(!super::classify(&socket(0, 0, Some(info)), Duration::from_secs(1)).is_idle());
    }

    #[test]
    fn no_tcp_info_is_never_idle() {
        assert_eq!(
            classify(&socket(0, 0, None)),
            Activity::InFlight(Busy::Unknown)
        );
    }
}

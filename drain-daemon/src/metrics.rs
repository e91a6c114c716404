//! Prometheus metrics of the drains a daemon runs, served on an opt-in address
//! (`drain-daemon --metrics-address`).
//!
//! An operator asks what drains did (how they ended, how connections were closed) and
//! what a running drain is waiting for (how many connections are idle or in flight, how
//! many new clients were refused or steered). Each drain records into [`Metrics`]
//! through a [`DrainMetrics`]: its pass-by-pass progress sets the per-port gauges and
//! the eBPF counters, its report adds the outcome and the closes. The gauges of a port
//! go away when its drain ends; the counters stay, as counters must.
//!
//! The HTTP side is a minimal HTTP/1.1 responder (one `GET /metrics` per connection,
//! then close): a scrape is all it serves, and a web framework would be most of the
//! daemon's code.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::drain::{DrainError, DrainReport, Outcome, Progress};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    method: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortState {
    port: u16,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortAction {
    port: u16,
    action: &'static str,
}

struct Inner {
    registry: Registry,
    drains: Family<OutcomeLabels, Counter>,
    closed: Family<ClosedLabels, Counter>,
    close_requested: Family<ProtocolLabels, Counter>,
    draining: Family<PortState, Gauge>,
    new_connections: Family<PortAction, Counter>,
}

/// The daemon's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("drain_daemon");
        let drains = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "drains",
            "Drains run by the daemon, by how they ended (drained, deadline_reached, cancelled, failed)",
            drains.clone(),
        );
        let closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections closed by drains, by method (graceful FIN, abortive RST) and kind (idle, boundary: between a response and the next request, forced: at the deadline with --force)",
            closed.clone(),
        );
        let close_requested = Family::<ProtocolLabels, Counter>::default();
        registry.register(
            "close_requested",
            "Connections drains asked the client to close in its own protocol, by protocol (http: Connection: close written into a response, websocket: a close frame, 1001 going away)",
            close_requested.clone(),
        );
        let draining = Family::<PortState, Gauge>::default();
        registry.register(
            "draining_connections",
            "Connections a running drain waits for, by port and state (idle, in_flight)",
            draining.clone(),
        );
        let new_connections = Family::<PortAction, Counter>::default();
        registry.register(
            "new_connections",
            "New connections to a draining port, refused (RST) or steered to a successor by the eBPF program",
            new_connections.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            drains,
            closed,
            close_requested,
            draining,
            new_connections,
        }))
    }
}

impl Metrics {
    /// Starts recording one drain of `port`.
    pub fn drain(&self, port: u16) -> DrainMetrics {
        DrainMetrics {
            metrics: self.clone(),
            port,
            refused: 0,
            steered: 0,
        }
    }

    /// The metrics in the text exposition format (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }
}

/// One drain's recorder. Dropping it (the drain ended, or its task was dropped) removes
/// its port's gauges.
pub struct DrainMetrics {
    metrics: Metrics,
    port: u16,
    /// The eBPF counts already added to the counters.
    refused: u64,
    steered: u64,
}

impl DrainMetrics {
    /// After each pass.
    pub fn progress(&mut self, progress: &Progress) {
        for (state, connections) in [("idle", progress.idle), ("in_flight", progress.in_flight)] {
            let labels = PortState {
                port: self.port,
                state,
            };
            let connections = i64::try_from(connections).unwrap_or(i64::MAX);
            self.metrics
                .0
                .draining
                .get_or_create(&labels)
                .set(connections);
        }
        self.new_connections(progress.refused, progress.steered);
    }

    /// When the drain returned.
    pub fn finished(&mut self, result: &Result<DrainReport, DrainError>) {
        let outcome = match result {
            Ok(report) => match report.outcome {
                Outcome::Drained => "drained",
                Outcome::DeadlineReached => "deadline_reached",
                Outcome::Cancelled => "cancelled",
            },
            Err(_) => "failed",
        };
        self.metrics
            .0
            .drains
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        let Ok(report) = result else {
            return;
        };
        let graceful_at_boundary = report
            .closed_at_boundary
            .saturating_sub(report.closed_at_boundary_abortively);
        let closes = [
            (
                "graceful",
                "idle",
                report
                    .closed_gracefully
                    .saturating_sub(graceful_at_boundary),
            ),
            ("graceful", "boundary", graceful_at_boundary),
            (
                "abortive",
                "idle",
                report
                    .closed_abortively
                    .saturating_sub(report.closed_at_boundary_abortively),
            ),
            ("abortive", "boundary", report.closed_at_boundary_abortively),
            ("graceful", "forced", report.forced_gracefully),
            ("abortive", "forced", report.forced_abortively),
        ];
        for (method, kind, closed) in closes {
            // Every label set is shown once a drain ended, zeros included: a rate over
            // a series that appears only at its first close misses that close.
            self.metrics
                .0
                .closed
                .get_or_create(&ClosedLabels { method, kind })
                .inc_by(closed);
        }
        for (protocol, sent) in [
            ("http", report.connection_close_sent),
            ("websocket", report.websocket_close_sent),
        ] {
            self.metrics
                .0
                .close_requested
                .get_or_create(&ProtocolLabels { protocol })
                .inc_by(sent);
        }
        self.new_connections(report.refused_connections, report.steered_connections);
    }

    /// Adds what the eBPF counts grew by since last time.
    fn new_connections(&mut self, refused: u64, steered: u64) {
        let family = &self.metrics.0.new_connections;
        let port = self.port;
        family
            .get_or_create(&PortAction {
                port,
                action: "refused",
            })
            .inc_by(refused.saturating_sub(self.refused));
        family
            .get_or_create(&PortAction {
                port,
                action: "steered",
            })
            .inc_by(steered.saturating_sub(self.steered));
        self.refused = self.refused.max(refused);
        self.steered = self.steered.max(steered);
    }
}

impl Drop for DrainMetrics {
    fn drop(&mut self) {
        for state in ["idle", "in_flight"] {
            self.metrics.0.draining.remove(&PortState {
                port: self.port,
                state,
            });
        }
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("binding the metrics address {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Binds `address` for [`serve`].
pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })
}

/// The longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!("accepting a metrics connection failed ({err}); trying again in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &metrics).await {
                debug!("metrics connection: {err}");
            }
            drop(slot);
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request in time"))??;
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            let body = metrics.encode();
            response("200 OK", CONTENT_TYPE, &body, head_only)
        }
        Route::NotFound => response(
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n",
            false,
        ),
        Route::MethodNotAllowed => {
            response("405 Method Not Allowed", "text/plain", "GET only\n", false)
        }
        Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n", false),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// What prometheus-client's text encoder writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Reads up to the blank line ending the request head (a GET has no body).
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
        if head.len() > MAX_HEAD_BYTES {
            break;
        }
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// What the request line asks for. Pure, for its tests.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics {
            head_only: method == "HEAD",
        },
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
    }

    fn progress(idle: usize, in_flight: usize, refused: u64, steered: u64) -> Progress {
        Progress {
            elapsed_ms: 0,
            time_left_ms: 0,
            idle,
            in_flight,
            accept_queue: 0,
            closed: 0,
            refused,
            steered,
        }
    }

    #[test]
    fn a_drain_sets_its_gauges_and_adds_what_its_counts_grew_by() {
        let metrics = Metrics::default();
        let mut drain = metrics.drain(8080);
        drain.progress(&progress(3, 1, 2, 0));
        drain.progress(&progress(1, 1, 5, 1));
        let text = metrics.encode();
        assert!(
            text.contains("drain_daemon_draining_connections{port=\"8080\",state=\"idle\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "drain_daemon_draining_connections{port=\"8080\",state=\"in_flight\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "drain_daemon_new_connections_total{port=\"8080\",action=\"refused\"} 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "drain_daemon_new_connections_total{port=\"8080\",action=\"steered\"} 1\n"
            ),
            "{text}"
        );
        drop(drain);
        let text = metrics.encode();
        assert!(
            !text.contains("draining_connections{"),
            "gauges gone with the drain: {text}"
        );
        assert!(
            text.contains("action=\"refused\"} 5\n"),
            "counters stay: {text}"
        );
    }

    #[test]
    fn a_report_adds_its_outcome_and_closes_by_method_and_kind() {
        let report: DrainReport = serde_json::from_value(serde_json::json!({
            "port": 8080, "outcome": "drained", "elapsed_ms": 10,
            "closed_gracefully": 5, "closed_abortively": 2,
            "closed_at_boundary": 3, "closed_at_boundary_abortively": 1,
            "finished_on_their_own": 0, "forced_gracefully": 1, "forced_abortively": 0,
            "refused_connections": 4, "steered_connections": 0, "accept_queue": 0,
            "remaining": [], "steering_pinned_at": null, "still_refusing": true,
        }))
        .unwrap();
        let metrics = Metrics::default();
        let mut drain = metrics.drain(8080);
        drain.progress(&progress(0, 0, 3, 0));
        drain.finished(&Ok(report));
        let text = metrics.encode();
        for line in [
            "drain_daemon_drains_total{outcome=\"drained\"} 1\n",
            "drain_daemon_connections_closed_total{method=\"graceful\",kind=\"idle\"} 3\n",
            "drain_daemon_connections_closed_total{method=\"graceful\",kind=\"boundary\"} 2\n",
            "drain_daemon_connections_closed_total{method=\"abortive\",kind=\"idle\"} 1\n",
            "drain_daemon_connections_closed_total{method=\"abortive\",kind=\"boundary\"} 1\n",
            "drain_daemon_connections_closed_total{method=\"graceful\",kind=\"forced\"} 1\n",
            "drain_daemon_connections_closed_total{method=\"abortive\",kind=\"forced\"} 0\n",
            // 3 seen in progress, 4 at the end: 4 in all, not 7.
            "drain_daemon_new_connections_total{port=\"8080\",action=\"refused\"} 4\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

//! The control protocol's messages: what a client asks ([`Request`]), what the daemon
//! answers ([`Reply`]), and how a request line is read ([`parse_request`]).

use std::{io, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    app::Blame,
    drain::{DrainPlan, DrainReport, Progress},
    duration::{self, PlanError},
};

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Drain {
        plan: DrainPlan,
        /// The client's network namespace; the daemon only drains its own.
        netns_inode: u64,
    },
    Release {
        port: u16,
        netns_inode: u64,
    },
    /// Sent during a drain: stop it. `abort` also stops refusing new connections.
    Cancel {
        abort: bool,
    },
}

/// What the daemon answers. Every reply but `Progress` is final.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Progress(Progress),
    Report(DrainReport),
    Released { released: bool },
    Error { kind: ErrorKind, message: String },
}

/// The class of a failed request, which decides `drainctl`'s exit code.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target or the machine is not as required (exit 3).
    Environment,
    /// Anything else (exit 4).
    Failure,
    /// The daemon serves another network namespace: drain standalone instead.
    OtherNamespace,
    /// The daemon is stopping and takes no new drain: drain standalone instead.
    Stopping,
}

/// Why talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("connecting to drain-daemon at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to drain-daemon: {0}")]
    Io(#[from] io::Error),
    #[error("drain-daemon sent an invalid reply: {0}")]
    Protocol(#[from] serde_json::Error),
    #[error("drain-daemon closed the connection before its final reply")]
    Closed,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request: {0}")]
    Json(#[from] serde_json::Error),
    /// A drain plan outside the limits drainctl applies: a client other than drainctl
    /// must not get a drain that overflows its deadline or busy-loops.
    #[error("invalid drain plan: {0}")]
    Plan(#[from] PlanError),
}

/// Reads one request line: the JSON of a [`Request`], a drain's plan checked with
/// [`duration::check_plan`]. Pure (no I/O), so the fuzzer calls it (tests/fuzz.rs):
/// whatever a local client sends must be an error reply, never a panic in the daemon.
pub fn parse_request(line: &str) -> Result<Request, RequestError> {
    let request: Request = serde_json::from_str(line)?;
    if let Request::Drain { plan, .. } = &request {
        duration::check_plan(plan)?;
    }
    Ok(request)
}

impl Reply {
    pub fn error(kind: ErrorKind, message: String) -> Self {
        Reply::Error { kind, message }
    }
}

impl From<Blame> for ErrorKind {
    fn from(blame: Blame) -> Self {
        match blame {
            Blame::Environment => ErrorKind::Environment,
            Blame::Tool => ErrorKind::Failure,
        }
    }
}

/// One message as it goes on the wire: its JSON and a newline.
pub(super) fn encode_line(message: &impl Serialize) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn requests_are_one_tagged_json_object() {
        let request = Request::Drain {
            plan: DrainPlan {
                port: 8080,
                timeout: Duration::from_secs(30),
                poll_interval: Duration::from_millis(100),
                quiet_period: Duration::from_secs(1),
                close_grace: Duration::from_secs(2),
                pace: crate::drain::Pace::Batches {
                    percent: 25,
                    interval: Duration::from_millis(500),
                },
                force: true,
                accept_grace: Duration::ZERO,
                pid: None,
                successor_port: None,
                no_connection_close: false,
                websocket_close: false,
                keep_refusing: crate::drain::DEFAULT_KEEP_REFUSING,
            },
            netns_inode: 4026531840,
        };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(
            line,
            r#"{"request":"drain","plan":{"port":8080,"timeout_ms":30000,"poll_interval_ms":100,"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{"batches":{"percent":25,"interval_ms":500}},"force":true,"accept_grace_ms":0,"pid":null,"no_connection_close":false,"keep_refusing_ms":90000},"netns_inode":4026531840}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        let cancel: Request = serde_json::from_str(r#"{"request":"cancel","abort":true}"#).unwrap();
        assert_eq!(cancel, Request::Cancel { abort: true });
    }

    #[test]
    fn error_replies_carry_their_kind() {
        let reply = Reply::error(ErrorKind::OtherNamespace, "x".into());
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            line,
            r#"{"reply":"error","kind":"other_namespace","message":"x"}"#
        );
    }

    #[test]
    fn plans_outside_the_limits_are_refused_not_run() {
        let line = |timeout_ms: &str, poll_interval_ms: &str| {
            format!(
                r#"{{"request":"drain","plan":{{"port":8080,"timeout_ms":{timeout_ms},"poll_interval_ms":{poll_interval_ms},"quiet_period_ms":1000,"close_grace_ms":2000,"pace":{{"spread":0}},"force":false,"accept_grace_ms":0}},"netns_inode":1}}"#
            )
        };
        assert!(parse_request(&line("30000", "100")).is_ok());
        let err = parse_request(&line("18446744073709551615", "100")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid drain plan: --timeout: "),
            "{err}"
        );
        let err = parse_request(&line("30000", "0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid drain plan: --poll-interval: shorter than the minimum of 10ms"
        );
        assert!(matches!(
            parse_request("{\"request\":"),
            Err(RequestError::Json(_))
        ));
    }
}

//! The control API between `drainctl` and `drain-daemon`: JSON lines over a Unix socket.
//!
//! The daemon holds the steering state of its network namespace and runs drains for
//! clients; `drainctl` talks to it when its socket answers and drains on its own
//! otherwise. One connection carries one request: the client sends a [`Request`] line,
//! may later send a [`Request::Cancel`] line, and reads [`Reply`] lines until a final
//! one (`protocol.rs`). A client that disconnects cancels its drain the way SIGTERM does
//! (the refusal stays until the listener closes).
//!
//! - `protocol.rs`: the messages, and how a request line is read.
//! - [`client`]: `drainctl`'s side: a drain or a release asked of the daemon, bounded so
//!   a daemon that stops answering does not hold drainctl.
//! - `server.rs`: the daemon's side: accepting clients and answering their request, a
//!   drain run by `served_drain.rs`.
//! - `peer.rs`: who is asking. On the root socket only root peers with the capabilities
//!   of a drain are served, in the daemon's network namespace; on the pod socket any
//!   peer is, in its own network and PID namespaces only ([`SocketKind`]).
//! - `register.rs`: the drains a daemon runs ([`Drains`]): it reports them to systemd, and
//!   when it stops it refuses new drains ([`ErrorKind::Stopping`]: drainctl then drains
//!   on its own) but lets the running ones reach their reports, since cutting one midway
//!   would break the `ExecStop=` line that asked for it.
//!
//! No peer holds up another: every line read from a peer is bounded ([`lines`]), a peer
//! has [`REQUEST_TIMEOUT`] to send its request and as long to take each reply, and on
//! the pod socket each pod has a few requests at once, records in a few network
//! namespaces ([`pod_quota`]) and drains of bounded length ([`pod_limits`]), and sees
//! its processes as it numbers them ([`pod_view`]).

pub mod client;
pub mod lines;
mod peer;
pub mod pod_limits;
pub mod pod_quota;
pub mod pod_view;
mod protocol;
mod register;
mod served_drain;
mod server;

pub use self::{
    client::Client,
    peer::SocketKind,
    protocol::{parse_request, ControlError, ErrorKind, Reply, Request, RequestError},
    register::{Drains, Running},
    server::{serve, MAX_CONNECTIONS, MAX_REQUEST_BYTES, REQUEST_TIMEOUT},
};

/// Where `drain-daemon` listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/drain-daemon/control.sock";

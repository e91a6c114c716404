//! Test support for drain-daemon: everything an end-to-end test needs to drain a real
//! server without touching the host, kept in one crate so every test builds on the same,
//! self-tested pieces instead of ad-hoc sleeps and sockets.
//!
//! - [`Netns`]: a private network namespace for the test thread (and the processes it spawns).
//! - [`Pod`]: a network and PID namespace of their own, entered without capabilities.
//! - [`PrivateMounts`]: a private mount namespace with its own bpffs and /run, for tests
//!   of the pin tree that must not touch the host's.
//! - [`http`]: a real HTTP/1.1 keep-alive server (in-process, or as the `drain-demo-server`
//!   process) that logs every connection event, plus keep-alive client helpers.
//! - [`bin_path`], [`ChildGuard`], [`spawn_demo_server`]: running workspace binaries.
//! - [`EventReader`]: waiting for event lines with a timeout.
//! - [`hey`]: a real keep-alive load generator, and what it saw.
//! - [`nginx`]: nginx as a reverse proxy in front of the demo server.
//! - [`haproxy`]: haproxy balancing over two backends.
//!
//! A privileged end-to-end test looks like:
//!
//! ```no_run
//! use std::time::Duration;
//! use drain_tests::{spawn_demo_server, KeepAliveClient, Netns};
//!
//! let Some(_ns) = Netns::require() else { return };
//! let (_server, events) = spawn_demo_server(["--listen", "127.0.0.1:8080"]);
//! let addr = events.wait_listening(Duration::from_secs(5)).expect("demo server listening");
//! let mut client = KeepAliveClient::connect(addr).unwrap();
//! assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
//! ```

pub mod daemon;
pub mod drainctl;
pub mod events;
pub mod go;
pub mod haproxy;
pub mod http;
pub mod load;
pub mod mountns;
pub mod netns;
pub mod nginx;
pub mod pod;
pub mod process;
pub mod scenario;
pub mod systemd;

pub use daemon::{
    daemon_socket_path, drain_through_daemon, spawn_daemon, spawn_daemon_with,
    spawn_socket_activated_daemon, SERVING,
};
pub use drainctl::{
    drain_phase, drainctl_in_pid_namespace_of, drainctl_with_faults, run_drainctl, spawn_drainctl,
    spawn_drainctl_with, Drainctl, DrainctlOutput,
};
pub use events::{EventReader, EventWriter};
pub use http::{
    bind_listener, bind_listener_on, connect_refused_quickly, serve, serve_all, Closed,
    ConnectOutcome, KeepAliveClient, Response, Server,
};
pub use load::{hey, HeyRun};
pub use mountns::PrivateMounts;
pub use netns::{current_thread_netns_inode, NamedNetns, Netns};
pub use pod::{Container, Pod, PodUser};
pub use process::{
    bin_path, raise_open_files_limit, spawn_demo_server, spawn_demo_server_as,
    spawn_demo_server_via, ChildGuard,
};
pub use scenario::{
    assert_refused_at_once, assert_served, assert_untouched, busy_client, idle_client,
    start_server, start_server_via, wait_listeners, wait_request_read,
};

static ECHO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether child output and server events are echoed to stderr as `[label] line` (on by
/// default: the test harness shows them only for failing tests). The demo turns it off
/// to print its own narrative.
pub fn set_echo(enabled: bool) {
    ECHO.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn echo_enabled() -> bool {
    ECHO.load(std::sync::atomic::Ordering::Relaxed)
}

//! drain-daemon: drain a TCP listener from outside the server that owns it.
//!
//! The modules follow a drain's life: [`steer`] keeps new connections away from the
//! draining listener (eBPF sk_lookup), [`inventory`] lists and classifies what the
//! listener still holds (sock_diag with TCP_INFO, procfs for owners), [`close`] closes
//! idle connections gracefully from outside the owning process (borrowing its socket
//! through [`pidfd`]), [`close_http`] asks busy HTTP/1.x clients to close (eBPF sk_msg
//! writing `Connection: close`), and [`drain`] is the state machine that runs them to a
//! result.
//! [`status`] reports what ports hold and which drains run. [`cli`] is `drainctl`'s
//! command line; [`daemon`] is `drain-daemon`, serving
//! `drainctl` through the [`control`] API, and pods with no capability through its pod
//! socket ([`pod`], scoped to the peer's [`netns`] and [`pidns`]). [`safe_dir`] is how the files they keep as
//! root (bpffs pins, drain records) are reached without following anyone's symlinks.
//! [`app`] is what both programs share: exit codes, how a failure is blamed, and where
//! the log goes (journald for the daemon under systemd). [`metrics`] is what the daemon
//! tells Prometheus.
//! [`duration`] is how durations are written and the range each of a drain's settings
//! must stay in, for both.
#![forbid(unsafe_code)]

pub mod announce;
pub mod app;
pub mod capabilities;
pub mod cli;
pub mod close;
pub mod close_http;
pub mod control;
pub mod daemon;
pub mod drain;
pub mod duration;
pub mod failpoint;
pub mod inventory;
pub mod kernel_btf;
pub mod metrics;
pub mod netns;
pub mod pidfd;
pub mod pidns;
pub mod pod;
pub mod safe_dir;
pub mod status;
pub mod steer;

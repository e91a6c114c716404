//! `drain-daemon`: serve drainctl over a Unix socket. See `drain-daemon --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    drain_daemon::daemon::main()
}

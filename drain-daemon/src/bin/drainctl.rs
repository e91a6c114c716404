//! `drainctl`: drain a TCP port from the command line. See `drainctl --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // A copy of this executable started to keep a drain's refusal (steer::holder).
    drain_daemon::steer::run_if_asked();
    drain_daemon::cli::main()
}

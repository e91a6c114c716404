//! `drainctl`: drain a TCP port from the command line. See `drainctl --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    drain_daemon::cli::main()
}

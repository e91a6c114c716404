//! `drain-demo-server`: the HTTP/1.1 keep-alive server that drain tests drain, as a
//! separate process like a real server (drain-daemon acts on *another* process's sockets
//! via pidfd_getfd and sk_lookup, so the server must not live inside the test process).
//!
//! Usage: `drain-demo-server --listen ADDR [--listen ADDR ...] [--reuseport] [--dual-stack]`
//!
//! Prints the events of [`drain_tests::http::serve`] on stdout, one per line, starting with
//! one `listening <addr>` per listener (port 0 prints the port chosen). Runs until SIGTERM or
//! SIGINT, then prints `stopping <signal>`, closes its listeners and exits 0. Connections
//! still open at that point are closed by the exit. Exit 2 on bad arguments, 1 on a bind
//! error.
//!
//! SIGUSR1 plays a server's own graceful stop (nginx's QUIT, Go's `Shutdown`): it closes
//! the listeners, prints `listeners closed`, and keeps serving the connections it has
//! until they end or SIGTERM/SIGINT comes.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

const USAGE: &str =
    "usage: drain-demo-server --listen ADDR [--listen ADDR ...] [--reuseport] [--dual-stack]";

fn main() -> ExitCode {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut reuseport = false;
    let mut dual_stack = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next().map(|v| v.parse::<SocketAddr>()) {
                Some(Ok(addr)) => addrs.push(addr),
                Some(Err(e)) => return usage(&format!("--listen: {e}")),
                None => return usage("--listen needs an address"),
            },
            "--reuseport" => reuseport = true,
            "--dual-stack" => dual_stack = true,
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if addrs.is_empty() {
        return usage("at least one --listen ADDR is needed");
    }

    // Block the stop signals before any thread exists, so every thread inherits the mask
    // and the main thread alone takes them with sigwait.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    stop_signals.add(Signal::SIGUSR1);
    if let Err(e) = stop_signals.thread_block() {
        eprintln!("drain-demo-server: blocking signals: {e}");
        return ExitCode::FAILURE;
    }

    // A thousand connections need more than the usual 1024 descriptors.
    if let Err(err) = drain_tests::raise_open_files_limit() {
        eprintln!("drain-demo-server: cannot raise the open files limit: {err}");
    }
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in &addrs {
        match drain_tests::bind_listener(*addr, reuseport, dual_stack) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("drain-demo-server: bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut server = match drain_tests::serve_all(listeners, std::io::stdout()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("drain-demo-server: start: {e}");
            return ExitCode::FAILURE;
        }
    };

    let sig = loop {
        match stop_signals.wait() {
            Ok(Signal::SIGUSR1) => {
                if let Some(server) = server.take() {
                    server.stop();
                    let _ = writeln!(std::io::stdout(), "listeners closed");
                }
            }
            Ok(sig) => break sig,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("drain-demo-server: sigwait: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    // Not println!: that panics if the reader of our stdout has gone away.
    let _ = writeln!(std::io::stdout(), "stopping {sig}");
    if let Some(server) = server {
        server.stop();
    }
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("drain-demo-server: {why}\n{USAGE}");
    ExitCode::from(2)
}

//! `drain-demo-server`: the HTTP/1.1 keep-alive server that drain tests drain, as a
//! separate process like a real server (drain-daemon acts on *another* process's sockets
//! via pidfd_getfd and sk_lookup, so the server must not live inside the test process).
//!
//! Usage: `drain-demo-server --listen ADDR [--listen ADDR ...] [--reuseport] [--dual-stack]
//! [--bind-device NAME]` (`--dual-stack`: IPv6 listeners take IPv4 too, otherwise they are
//! IPv6-only; `--bind-device`: every listener takes only connections arriving on NAME)
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
//!
//! `--supervise` plays systemd's socket activation (or any supervisor that hands its
//! listener down): this process binds the one `--listen` address, keeps the listener,
//! and runs the server as a child that inherits it (`--listen-fd N`), printing `server
//! <pid>` for each. SIGHUP starts a new instance on the same listener (a restart after
//! the old one was stopped); SIGTERM/SIGINT stops the current one and exits.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

const USAGE: &str =
    "usage: drain-demo-server --listen ADDR [--listen ADDR ...] [--reuseport] [--dual-stack] [--bind-device NAME]
       drain-demo-server --supervise --listen ADDR
       drain-demo-server --listen-fd N";

fn main() -> ExitCode {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut reuseport = false;
    let mut dual_stack = false;
    let mut device: Option<String> = None;
    let mut supervise = false;
    let mut inherited: Option<i32> = None;
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
            "--bind-device" => match args.next() {
                Some(name) => device = Some(name),
                None => return usage("--bind-device needs a device name"),
            },
            "--supervise" => supervise = true,
            "--listen-fd" => match args.next().map(|v| v.parse::<i32>()) {
                Some(Ok(fd)) if fd > 2 => inherited = Some(fd),
                _ => return usage("--listen-fd needs a descriptor number above 2"),
            },
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if addrs.is_empty() && inherited.is_none() {
        return usage("at least one --listen ADDR is needed");
    }
    if supervise && addrs.len() != 1 {
        return usage("--supervise takes exactly one --listen ADDR");
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
    if supervise {
        return supervisor::run(addrs[0], reuseport, &stop_signals);
    }
    let mut listeners = Vec::with_capacity(addrs.len());
    if let Some(fd) = inherited {
        // Dies with the supervisor that started it: a test's guard kills the supervisor
        // only, and a server left behind would outlive the test.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        listeners.push(supervisor::inherited_listener(fd));
    }
    for addr in &addrs {
        match drain_tests::bind_listener_on(*addr, reuseport, dual_stack, device.as_deref()) {
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

/// `--supervise` and `--listen-fd`: a listener held by a process that outlives the server.
mod supervisor {
    use std::{
        io::Write as _,
        net::{SocketAddr, TcpListener},
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        process::{Child, Command, ExitCode},
    };

    use nix::{
        fcntl::{fcntl, FcntlArg, FdFlag},
        sys::signal::{SigSet, Signal},
    };

    /// Binds `addr`, then runs server instances that inherit the listener until told to
    /// stop, keeping the listener open in between.
    pub fn run(addr: SocketAddr, reuseport: bool, signals: &SigSet) -> ExitCode {
        let mut signals = *signals;
        signals.add(Signal::SIGHUP);
        if let Err(e) = signals.thread_block() {
            eprintln!("drain-demo-server: blocking signals: {e}");
            return ExitCode::FAILURE;
        }
        let listener = match drain_tests::bind_listener(addr, reuseport, false) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("drain-demo-server: bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Handed down like systemd does: the descriptor survives exec. This process is
        // single-threaded, so no other child can inherit it by accident.
        if let Err(e) = fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())) {
            eprintln!("drain-demo-server: fcntl: {e}");
            return ExitCode::FAILURE;
        }
        let _ = writeln!(std::io::stdout(), "supervising {addr}");
        let mut child = match start(&listener) {
            Ok(child) => child,
            Err(e) => {
                eprintln!("drain-demo-server: starting the server: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            match signals.wait() {
                Ok(Signal::SIGHUP) => {
                    let _ = child.wait();
                    match start(&listener) {
                        Ok(next) => child = next,
                        Err(e) => eprintln!("drain-demo-server: restarting the server: {e}"),
                    }
                }
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("drain-demo-server: sigwait: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        ExitCode::SUCCESS
    }

    fn start(listener: &TcpListener) -> std::io::Result<Child> {
        let child = Command::new(std::env::current_exe()?)
            .args(["--listen-fd", &listener.as_raw_fd().to_string()])
            .spawn()?;
        let _ = writeln!(std::io::stdout(), "server {}", child.id());
        Ok(child)
    }

    /// The listener the supervisor handed down as descriptor `fd`.
    pub fn inherited_listener(fd: i32) -> TcpListener {
        // SAFETY: `--listen-fd` names a descriptor the parent opened for this process and
        // nothing else here uses; it is taken over exactly once, at start.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        TcpListener::from(fd)
    }
}

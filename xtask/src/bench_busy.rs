//! The busy-server benchmark of `cargo xtask bench` (issue "Drain a busy server"): a drain
//! is for restarting a service that is in use, so what counts is how many of its clients'
//! requests fail when it is stopped under continuous keep-alive load, with drainctl or
//! without, against the server's own graceful stop. This measures that with real servers
//! and real clients rather than arguing it.
//!
//! Each run gets a fresh private network namespace (dropped at its end) and follows the
//! handover of a restart: the old server starts on :8080 with SO_REUSEPORT, the load
//! starts, 3 s later a successor binds the same port, then the old one is stopped in one
//! of four ways (plain TERM; its own graceful stop; `drainctl drain --port 8080 --pid
//! OLD` with the defaults, then TERM; drainctl and 0.3 s later the graceful stop, waiting
//! for drainctl). The load keeps running for 1 s after the old server exited and is then
//! stopped (hey on SIGINT lets its requests in flight finish and prints its summary), so
//! it outlasts the drain in every cell by construction: a load that ends on its own lets
//! every connection finish and proves nothing.
//!
//! Servers: nginx proxying to `drain-demo-server` (`/sleep/100`), a Go net/http server
//! (xtask/bench/go-server, built here offline), a Python `websockets` server. Behind a
//! load balancer there is no successor: haproxy balances over a server on :9001 (Go,
//! apache2 or Node.js) and a Go server on :9002, and the one on :9001 is stopped
//! (drained), its share going to the other. There drainctl also runs under `ip netns
//! exec`, where no bpffs outlives it and a holder process keeps its refusal.
//! Clients:
//! hey paced (`-c 100 -q 5`, GET and POST), hey back to back (`-c 50`, POST), and 200
//! websocket clients sending a heartbeat every 0.5 s (xtask/bench/ws_clients.py). A
//! failed request is a hey error or non-200 answer, or a heartbeat sent on a connection
//! that closed before its answer. Every wait has a timeout; servers run in process groups
//! of their own and are stopped (TERM, then KILL) on every path.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use drain_tests::{ChildGuard, HeyRun, NamedNetns, Netns};

use crate::bench::{median, ms, read_to_end_in_thread, run_child, ss, Machine, PORT};
use crate::output_of;

/// The port of the demo server behind nginx.
const BACKEND_PORT: u16 = 9000;
/// The ports of haproxy's two Go backends: the first is stopped, the second stays.
const LB_STOPPED_PORT: u16 = 9001;
const LB_OTHER_PORT: u16 = 9002;
/// Load before the successor starts (every connection is then on the old server).
const WARM_UP: Duration = Duration::from_secs(3);
/// Load after the old server exited, before the load stops.
const TAIL: Duration = Duration::from_secs(1);
/// From the drainctl start to the server's graceful signal, in the combined mode.
const GRACEFUL_AFTER_DRAIN: Duration = Duration::from_millis(300);
/// drainctl's own deadline, given explicitly for back-to-back clients (the default, 30 s,
/// would make each of those runs last 30 s: the drain cannot find a pause to close in).
const BACK_TO_BACK_TIMEOUT: &str = "5s";
/// The default `--poll-interval` of `drainctl drain`.
const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The default `--timeout` of `drainctl drain`.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the old server to exit once told to (nginx and Go wait for their
/// busy connections when stopping gracefully).
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for a server's listener, and for the load to stop and report.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const LOAD_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of every load (`hey -z`, the websocket fleet's own limit).
const LOAD_MAX: &str = "120";

/// `--busy-runs` and `--busy-cells` of `cargo xtask bench`.
#[derive(clap::Args, Clone)]
pub struct Options {
    /// Runs per cell of the busy part (median and max of failed requests are reported).
    #[arg(long, default_value_t = 3)]
    pub busy_runs: usize,
    /// Run only the busy cells whose label ("nginx / paced GET / TERM") contains this.
    #[arg(long)]
    pub busy_cells: Option<String>,
}

impl Options {
    /// The same options on a command line (for the re-run by the release build).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--busy-runs".to_string(), self.busy_runs.to_string()];
        if let Some(cells) = &self.busy_cells {
            args.extend(["--busy-cells".to_string(), cells.clone()]);
        }
        args
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Nginx,
    Go,
    /// haproxy over this backend on [`LB_STOPPED_PORT`], which is stopped, and a Go
    /// server on [`LB_OTHER_PORT`].
    Haproxy(Backend),
    Websockets,
}

/// The server behind haproxy that is stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Go,
    /// apache2 with mpm_event serving a static file (`/sleep/100`, answered at once).
    Apache,
    /// Node.js's http server (xtask/bench/node_server.js).
    Node,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Clients {
    PacedGet,
    PacedPost,
    BackToBack,
    Heartbeats,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Term,
    Graceful,
    Drain,
    DrainGraceful,
    /// drainctl run by `ip netns exec` (no bpffs outlives it), then TERM.
    DrainNetnsExec,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Nginx => "nginx → demo server",
            Server::Go => "Go net/http",
            Server::Haproxy(Backend::Go) => "haproxy → 2 Go, one stopped",
            Server::Haproxy(Backend::Apache) => "haproxy → apache2 + Go, apache2 stopped",
            Server::Haproxy(Backend::Node) => "haproxy → Node.js + Go, Node.js stopped",
            Server::Websockets => "Python websockets",
        }
    }

    fn clients(self) -> &'static [Clients] {
        match self {
            Server::Nginx | Server::Go | Server::Haproxy(Backend::Go) => {
                &[Clients::PacedGet, Clients::PacedPost, Clients::BackToBack]
            }
            Server::Haproxy(Backend::Apache | Backend::Node) => &[Clients::BackToBack],
            Server::Websockets => &[Clients::Heartbeats],
        }
    }

    /// The server's own graceful stop, if it has one.
    fn graceful_signal(self) -> Option<libc::c_int> {
        match self {
            Server::Nginx => Some(libc::SIGQUIT),
            Server::Go | Server::Haproxy(Backend::Go | Backend::Node) => Some(libc::SIGTERM),
            // apache2's graceful-stop; TERM is its fast stop.
            Server::Haproxy(Backend::Apache) => Some(libc::SIGWINCH),
            Server::Websockets => None,
        }
    }

    /// The port of the server that is stopped (and drained).
    fn stopped_port(self) -> u16 {
        match self {
            Server::Haproxy(_) => LB_STOPPED_PORT,
            _ => PORT,
        }
    }

    /// Whether a successor takes over the stopped server's port (a handover), or the
    /// other servers behind the load balancer take its share.
    fn has_successor(self) -> bool {
        !matches!(self, Server::Haproxy(_))
    }

    fn graceful_label(self) -> &'static str {
        match self {
            Server::Nginx => "QUIT",
            Server::Go | Server::Haproxy(Backend::Go) => "TERM → Server.Shutdown",
            Server::Haproxy(Backend::Apache) => "WINCH (graceful-stop)",
            Server::Haproxy(Backend::Node) => "TERM → server.close",
            Server::Websockets => "none",
        }
    }
}

impl Clients {
    fn label(self) -> &'static str {
        match self {
            Clients::PacedGet => "paced GET",
            Clients::PacedPost => "paced POST",
            Clients::BackToBack => "back-to-back POST",
            Clients::Heartbeats => "200 heartbeats",
        }
    }

    fn hey_args(self) -> &'static [&'static str] {
        match self {
            Clients::PacedGet => &["-c", "100", "-q", "5", "-m", "GET"],
            Clients::PacedPost => &["-c", "100", "-q", "5", "-m", "POST", "-d", "order=42"],
            Clients::BackToBack => &["-c", "50", "-m", "POST", "-d", "order=42"],
            Clients::Heartbeats => &[],
        }
    }
}

#[derive(Clone, Copy)]
struct Cell {
    server: Server,
    clients: Clients,
    stop: Stop,
}

impl Cell {
    fn stop_label(self) -> String {
        let graceful = self.server.graceful_label();
        match self.stop {
            Stop::Term => "TERM".to_string(),
            Stop::Graceful => graceful.to_string(),
            Stop::Drain => match self.drain_timeout() {
                Some(timeout) => format!("drainctl (--timeout {timeout}), then TERM"),
                None => "drainctl, then TERM".to_string(),
            },
            Stop::DrainGraceful => format!("drainctl + {graceful}"),
            Stop::DrainNetnsExec => format!(
                "ip netns exec drainctl (--timeout {}), then TERM",
                self.drain_timeout().unwrap_or("30s")
            ),
        }
    }

    fn label(self) -> String {
        format!(
            "{} / {} / {}",
            self.server.label(),
            self.clients.label(),
            self.stop_label()
        )
    }

    /// `--timeout` given to drainctl, if not its default.
    fn drain_timeout(self) -> Option<&'static str> {
        (self.clients == Clients::BackToBack).then_some(BACK_TO_BACK_TIMEOUT)
    }

    /// Whether the old server is started with its graceful stop on TERM (Go's `-graceful`).
    fn graceful_server(self) -> bool {
        matches!(self.stop, Stop::Graceful | Stop::DrainGraceful)
    }
}

/// Every cell, in table order; a server without a graceful stop has no rows for it.
fn cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for server in [
        Server::Nginx,
        Server::Go,
        Server::Haproxy(Backend::Go),
        Server::Haproxy(Backend::Apache),
        Server::Haproxy(Backend::Node),
        Server::Websockets,
    ] {
        for &clients in server.clients() {
            for stop in [
                Stop::Term,
                Stop::Graceful,
                Stop::Drain,
                Stop::DrainGraceful,
                Stop::DrainNetnsExec,
            ] {
                let graceful = matches!(stop, Stop::Graceful | Stop::DrainGraceful);
                // Behind the load balancer, with the load of the losses it was measured for.
                let netns_exec = stop == Stop::DrainNetnsExec;
                let behind_haproxy = matches!(server, Server::Haproxy(_));
                if (!graceful || server.graceful_signal().is_some())
                    && (!netns_exec || (behind_haproxy && clients == Clients::BackToBack))
                {
                    cells.push(Cell {
                        server,
                        clients,
                        stop,
                    });
                }
            }
        }
    }
    cells
}

/// What one run saw.
struct RunResult {
    failed: u64,
    total: u64,
    /// From the stop's start (signal or drainctl spawn) to the old server's exit.
    stop_time: Duration,
    drain: Option<Drain>,
    /// How requests failed or connections closed, as the clients reported it.
    detail: String,
}

struct Drain {
    wall: Duration,
    code: Option<i32>,
    /// Connections the report lists as remaining (left open at the deadline).
    remaining: usize,
    /// drainctl's own CPU time (user + system, from wait4).
    cpu: Duration,
    /// Connections the drain closed (gracefully or not, at a boundary or idle).
    closed: u64,
    /// Connections asked to close in their own protocol (`connection_close_sent` +
    /// `websocket_close_sent`).
    asked: u64,
    /// The peer's CPU time over the same run: `ss -tin` of the port every poll interval.
    peer_cpu: Duration,
}

/// The programs a run starts, found or built once.
struct Tools {
    drainctl: PathBuf,
    demo_server: PathBuf,
    go_server: PathBuf,
    python: PathBuf,
    scripts: PathBuf,
    /// Per-run files: nginx prefixes, server logs.
    work: PathBuf,
}

/// Runs every cell `options.busy_runs` times (round-robin over the cells, so a noisy moment of
/// the shared machine hits them all); returns the markdown report.
pub fn run(machine: &Machine, options: &Options, target: &Path, release: &Path) -> Result<String> {
    ensure!(options.busy_runs >= 1, "--busy-runs must be at least 1");
    let tools = Tools::find(target, release)?;
    let cells: Vec<Cell> = cells()
        .into_iter()
        .filter(|cell| {
            options
                .busy_cells
                .as_ref()
                .is_none_or(|f| cell.label().contains(f))
        })
        .collect();
    ensure!(
        !cells.is_empty(),
        "no busy cell matches {:?}",
        options.busy_cells
    );
    let started = Instant::now();
    let mut results: Vec<Vec<RunResult>> = cells.iter().map(|_| Vec::new()).collect();
    let mut notes = Vec::new();
    for run in 1..=options.busy_runs {
        for (cell, results) in cells.iter().zip(&mut results) {
            println!(
                "bench: busy {} (run {run}/{})",
                cell.label(),
                options.busy_runs
            );
            match run_once(*cell, &tools) {
                Ok(result) => {
                    let drain = result.drain.as_ref().map_or(String::new(), |d| {
                        format!(
                            " (drain exit {:?}, {} left, {} closed, {} asked in-band, CPU {:.0} ms, ss -tin polled {:.0} ms)",
                            d.code,
                            d.remaining,
                            d.closed,
                            d.asked,
                            ms(d.cpu),
                            ms(d.peer_cpu)
                        )
                    });
                    println!(
                        "bench:   failed {} of {}, stop {:.1} s{drain}{}",
                        result.failed,
                        result.total,
                        result.stop_time.as_secs_f64(),
                        result.detail
                    );
                    results.push(result);
                }
                Err(e) => notes.push(format!("{} (run {run}): {e:#}", cell.label())),
            }
        }
    }
    Ok(render(
        machine,
        options.busy_runs,
        &cells,
        &results,
        &notes,
        started.elapsed(),
    ))
}

impl Tools {
    fn find(target: &Path, release: &Path) -> Result<Tools> {
        let scripts = crate::workspace().join("xtask/bench");
        let work = target.join("bench/busy");
        std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        let tools = Tools {
            drainctl: release.join("drainctl"),
            demo_server: release.join("drain-demo-server"),
            go_server: drain_tests::go::build(
                Path::new("go"),
                &scripts.join("go-server"),
                &target.join("bench/go"),
            )
            .context("building the Go server (apt golang-go; `cargo xtask bench` installs it)")?,
            python: python_with_websockets()?,
            scripts,
            work,
        };
        for bin in [&tools.drainctl, &tools.demo_server] {
            ensure!(
                bin.is_file(),
                "{} is missing: build the release binaries",
                bin.display()
            );
        }
        Ok(tools)
    }

    /// A server's stderr (and stdout) file, overwritten by every run.
    fn log(&self, name: &str) -> Result<Stdio> {
        let path = self.work.join(format!("{name}.log"));
        let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(file.into())
    }
}

/// The interpreter that `python3` runs, if it can import `websockets` (its real path: a
/// shim such as pyenv's would otherwise be the process drainctl is given).
fn python_with_websockets() -> Result<PathBuf> {
    let path = output_of(
        Command::new("python3").args(["-c", "import sys, websockets; print(sys.executable)"]),
    )
    .context("python3 with the websockets package (`cargo xtask bench` installs it)")?;
    Ok(PathBuf::from(path.trim()))
}

// ---------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------

fn run_once(cell: Cell, tools: &Tools) -> Result<RunResult> {
    let _netns = Netns::new().context("creating a private network namespace (run as root)")?;
    let port = cell.server.stopped_port();
    let mut old = start_server(cell, "old", tools)?;
    wait_listeners(port, 1)?;
    let _others = start_others(cell.server, tools)?;
    let load = Load::start(cell.clients, tools)?;
    std::thread::sleep(WARM_UP);
    let _successor = if cell.server.has_successor() {
        let successor = start_server(cell, "new", tools)?;
        wait_listeners(port, 2)?;
        Some(successor)
    } else {
        None
    };
    let (stop_time, drain) = stop_old(cell, &mut old, tools)?;
    std::thread::sleep(TAIL);
    let (failed, total, detail) = load.stop()?;
    Ok(RunResult {
        failed,
        total,
        stop_time,
        drain,
        detail,
    })
}

/// A server in a process group of its own (nginx's workers are its master's children):
/// the group is sent TERM, then KILL, unless the server has exited.
struct ServerProcess(ChildGuard);

impl ServerProcess {
    fn spawn(command: &mut Command, log: Stdio) -> Result<ServerProcess> {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        Ok(ServerProcess(ChildGuard(child)))
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn signal(&self, signal: libc::c_int) {
        signal_pid(self.pid(), signal);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            if let Ok(group) = libc::pid_t::try_from(self.pid()) {
                // SAFETY: kill(2) with a negative pid signals the process group that our
                // own child leads (it is not reaped yet, so the id is still ours).
                unsafe { libc::kill(-group, signal) };
            }
            let _ = self.0.wait_timeout(Duration::from_secs(3));
        }
    }
}

fn signal_pid(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; the pid is a child not reaped yet.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Starts the servers that stay, around the one stopped: nginx's demo backend; haproxy
/// and its other Go backend. Returns once they listen.
fn start_others(server: Server, tools: &Tools) -> Result<Vec<ServerProcess>> {
    let mut others = Vec::new();
    match server {
        Server::Nginx => {
            others.push(ServerProcess::spawn(
                Command::new(&tools.demo_server)
                    .args(["--listen", &format!("127.0.0.1:{BACKEND_PORT}")]),
                tools.log("demo-backend")?,
            )?);
            wait_listeners(BACKEND_PORT, 1)?;
        }
        Server::Haproxy(_) => {
            others.push(ServerProcess::spawn(
                Command::new(&tools.go_server)
                    .args(["-listen", &format!("127.0.0.1:{LB_OTHER_PORT}")]),
                tools.log("go-other")?,
            )?);
            wait_listeners(LB_OTHER_PORT, 1)?;
            let config =
                drain_tests::haproxy::config(&tools.work, PORT, [LB_STOPPED_PORT, LB_OTHER_PORT])
                    .context("write haproxy's configuration")?;
            others.push(ServerProcess::spawn(
                &mut drain_tests::haproxy::command(&config),
                tools.log("haproxy")?,
            )?);
            wait_listeners(PORT, 1)?;
        }
        Server::Go | Server::Websockets => {}
    }
    Ok(others)
}

/// Starts an instance (`role`: "old" or "new") of the cell's server on its port.
fn start_server(cell: Cell, role: &str, tools: &Tools) -> Result<ServerProcess> {
    let log = tools.log(&format!("server-{role}"))?;
    let mut command = match cell.server {
        Server::Nginx => {
            let prefix = tools.work.join(format!("nginx-{role}"));
            drain_tests::nginx::proxy_prefix(&prefix, PORT, BACKEND_PORT)
                .with_context(|| format!("write the nginx prefix {}", prefix.display()))?;
            drain_tests::nginx::command(Path::new("nginx"), &prefix)
        }
        Server::Go | Server::Haproxy(Backend::Go) => {
            let mut command = Command::new(&tools.go_server);
            let port = cell.server.stopped_port();
            command.args(["-listen", &format!("127.0.0.1:{port}")]);
            if role == "old" && cell.graceful_server() {
                command.arg("-graceful");
            }
            command
        }
        Server::Haproxy(Backend::Apache) => {
            let config = apache_config(&tools.work, role)?;
            let mut command = Command::new("apache2");
            command.arg("-f").arg(config).arg("-DFOREGROUND");
            command
        }
        Server::Haproxy(Backend::Node) => {
            let mut command = Command::new("node");
            command
                .arg(tools.scripts.join("node_server.js"))
                .arg(LB_STOPPED_PORT.to_string());
            if role == "old" && cell.graceful_server() {
                command.arg("--graceful");
            }
            command
        }
        Server::Websockets => {
            let mut command = Command::new(&tools.python);
            command
                .arg(tools.scripts.join("ws_server.py"))
                .arg(PORT.to_string());
            command
        }
    };
    ServerProcess::spawn(&mut command, log)
}

/// Writes apache2's configuration for instance `role` on [`LB_STOPPED_PORT`]: mpm_event,
/// keep-alive without a request limit, a document root with the file `sleep/100` (POST
/// to a static file is answered with it). Runs as root, its children as www-data.
fn apache_config(dir: &Path, role: &str) -> Result<PathBuf> {
    let home = dir.join(format!("apache-{role}"));
    let root = home.join("root");
    std::fs::create_dir_all(root.join("sleep"))
        .with_context(|| format!("create {}", root.display()))?;
    std::fs::write(root.join("sleep/100"), "ok\n")?;
    // www-data must reach the document root.
    for path in [dir, home.as_path(), root.as_path(), &root.join("sleep")] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    let (home, root) = (home.display(), root.display());
    let conf = format!(
        "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
         LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
         ServerName localhost\nListen 127.0.0.1:{LB_STOPPED_PORT}\n\
         PidFile {home}/apache.pid\nErrorLog {home}/error.log\n\
         DefaultRuntimeDir {home}\nMutex file:{home}\nUser www-data\nGroup www-data\n\
         KeepAlive On\nMaxKeepAliveRequests 0\nKeepAliveTimeout 30\n\
         DocumentRoot {root}\n<Directory {root}>\n  Require all granted\n</Directory>\n"
    );
    let path = dir.join(format!("apache-{role}.conf"));
    std::fs::write(&path, conf).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Waits until `ss` lists at least `n` TCP listeners on `port`.
fn wait_listeners(port: u16, n: usize) -> Result<()> {
    drain_tests::wait_listeners(port, n, START_TIMEOUT)
}

/// Stops the old server the cell's way; returns the time to its exit and drainctl's run.
fn stop_old(
    cell: Cell,
    old: &mut ServerProcess,
    tools: &Tools,
) -> Result<(Duration, Option<Drain>)> {
    let started = Instant::now();
    let graceful = cell.server.graceful_signal();
    let drain = match (cell.stop, graceful) {
        (Stop::Term, _) => {
            old.signal(libc::SIGTERM);
            None
        }
        (Stop::Graceful, Some(signal)) => {
            old.signal(signal);
            None
        }
        (Stop::Drain | Stop::DrainNetnsExec, _) => {
            let drain = drainctl(cell, old.pid(), tools, None)?;
            old.signal(libc::SIGTERM);
            Some(drain)
        }
        (Stop::DrainGraceful, Some(signal)) => {
            Some(drainctl(cell, old.pid(), tools, Some(signal))?)
        }
        (Stop::Graceful | Stop::DrainGraceful, None) => {
            bail!("{} has no graceful stop", cell.server.label())
        }
    };
    match old.0.wait_timeout(EXIT_TIMEOUT)? {
        Some(_) => Ok((started.elapsed(), drain)),
        None => bail!("the old server was still running {EXIT_TIMEOUT:?} after its stop"),
    }
}

/// Runs `drainctl drain --port P --pid OLD --standalone --json` with the defaults (but
/// the cell's `--timeout`); with `graceful`, that signal goes to the old server
/// [`GRACEFUL_AFTER_DRAIN`] after drainctl started.
fn drainctl(cell: Cell, old: u32, tools: &Tools, graceful: Option<libc::c_int>) -> Result<Drain> {
    // `ip netns exec` needs the run's namespace under a name: the old server's.
    let named = (cell.stop == Stop::DrainNetnsExec)
        .then(|| NamedNetns::of(old))
        .transpose()?;
    let mut command = match &named {
        Some(named) => named.exec(&tools.drainctl),
        None => Command::new(&tools.drainctl),
    };
    command.args([
        "drain",
        "--port",
        &cell.server.stopped_port().to_string(),
        "--pid",
        &old.to_string(),
    ]);
    command.args(["--standalone", "--json"]);
    if let Some(timeout) = cell.drain_timeout() {
        command.args(["--timeout", timeout]);
    }
    let limit = DEFAULT_DRAIN_TIMEOUT + Duration::from_secs(30);
    let port = cell.server.stopped_port();
    let drain_running = AtomicBool::new(true);
    let (run, peer_cpu) = std::thread::scope(|scope| {
        if let Some(signal) = graceful {
            scope.spawn(move || {
                std::thread::sleep(GRACEFUL_AFTER_DRAIN);
                signal_pid(old, signal);
            });
        }
        let peer = scope.spawn(|| poll_like_a_drain(port, &drain_running));
        let run = run_child(&mut command, true, limit);
        drain_running.store(false, Ordering::Relaxed);
        let peer_cpu = peer.join().map_err(|_| anyhow!("the ss poller panicked"));
        (run, peer_cpu)
    });
    let (run, peer_cpu) = (run?, peer_cpu??);
    // Each drain's log, numbered in run order, for a run that went wrong.
    static DRAINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let number = DRAINS.fetch_add(1, Ordering::Relaxed) + 1;
    let log = tools.work.join(format!("drainctl-{number}.log"));
    std::fs::write(&log, &run.stderr).with_context(|| format!("write {}", log.display()))?;
    let code = run.status.code();
    ensure!(
        matches!(code, Some(0 | 1)),
        "drainctl failed ({}): {}",
        run.status,
        run.stderr_line()
    );
    let report: serde_json::Value = serde_json::from_slice(&run.stdout)
        .context("drainctl drain --json printed no JSON object")?;
    let count = |key: &str| report[key].as_u64().unwrap_or(0);
    Ok(Drain {
        wall: run.wall,
        code,
        remaining: report["remaining"].as_array().map_or(0, Vec::len),
        cpu: run.cpu,
        closed: count("closed_gracefully") + count("closed_abortively"),
        asked: count("connection_close_sent") + count("websocket_close_sent"),
        peer_cpu,
    })
}

/// The peer of drainctl's own cost: what a tool polling the port as often as a drain
/// does spends, `ss -tin` of its established sockets (TCP_INFO, no owners) every
/// [`DRAIN_POLL_INTERVAL`] while `running`. Returns the CPU time of all those runs.
fn poll_like_a_drain(port: u16, running: &AtomicBool) -> Result<Duration> {
    let mut cpu = Duration::ZERO;
    while running.load(Ordering::Relaxed) {
        let started = Instant::now();
        cpu += run_child(&mut ss("-Htin", port), false, START_TIMEOUT)?.cpu;
        std::thread::sleep(DRAIN_POLL_INTERVAL.saturating_sub(started.elapsed()));
    }
    Ok(cpu)
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// A load running in the background until [`Load::stop`].
struct Load {
    clients: Clients,
    child: ChildGuard,
    stdout: JoinHandle<Vec<u8>>,
}

impl Load {
    fn start(clients: Clients, tools: &Tools) -> Result<Load> {
        let mut command = match clients {
            Clients::Heartbeats => {
                let mut command = Command::new(&tools.python);
                command.arg(tools.scripts.join("ws_clients.py")).args([
                    &PORT.to_string(),
                    "200",
                    "0.5",
                    LOAD_MAX,
                ]);
                command
            }
            _ => {
                let mut command = Command::new("hey");
                command.args(["-z", &format!("{LOAD_MAX}s")]);
                command.args(clients.hey_args());
                command.arg(format!("http://127.0.0.1:{PORT}/sleep/100"));
                command
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(tools.log("load")?)
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        Ok(Load {
            clients,
            child: ChildGuard(child),
            stdout: read_to_end_in_thread(stdout),
        })
    }

    /// SIGINT (requests in flight finish), then reads the report: (failed, total, detail).
    fn stop(mut self) -> Result<(u64, u64, String)> {
        signal_pid(self.child.pid(), libc::SIGINT);
        let status = self
            .child
            .wait_timeout(LOAD_STOP_TIMEOUT)?
            .ok_or_else(|| anyhow!("the load did not stop within {LOAD_STOP_TIMEOUT:?}"))?;
        let stdout = self
            .stdout
            .join()
            .map_err(|_| anyhow!("the load's stdout reader panicked"))?;
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        ensure!(status.success(), "the load exited with {status}: {stdout}");
        match self.clients {
            Clients::Heartbeats => heartbeat_tally(&stdout),
            _ => Ok(hey_tally(HeyRun::parse(stdout))),
        }
    }
}

/// hey: failed = errors + answers other than 200; total = both + the 200s.
fn hey_tally(run: HeyRun) -> (u64, u64, String) {
    let failed = run.failed() + (run.responses - run.ok);
    let detail = run
        .errors
        .iter()
        .map(|line| format!("; {}", line.trim().replace('\t', " ")))
        .collect();
    (failed, run.responses + run.failed(), detail)
}

/// ws_clients.py's JSON line: failed = heartbeats lost, total = sent; detail = close codes.
fn heartbeat_tally(stdout: &str) -> Result<(u64, u64, String)> {
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("ws_clients.py printed no JSON: {stdout}"))?;
    let count = |key: &str| json[key].as_u64().unwrap_or(0);
    Ok((
        count("lost"),
        count("sent"),
        format!("; closes {}", json["closes"]),
    ))
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

fn render(
    machine: &Machine,
    runs: usize,
    cells: &[Cell],
    results: &[Vec<RunResult>],
    notes: &[String],
    took: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Stopping a busy server: failed requests per stop mode\n"
    );
    let _ = writeln!(out, "{}", machine.header());
    let _ = writeln!(
        out,
        "Handover on :{PORT} in a private netns: the old server under load, a successor on \
         the same port (SO_REUSEPORT) after {} s, then the old one stopped; the load runs \
         on until {} s after the old server exited. Failed: hey errors and non-200 answers \
         (heartbeats: pings sent on a connection that closed before the answer), of all \
         requests; median and max of {runs} runs. Stop: from the stop's start to the old \
         server's exit. drainctl: `drain --port {PORT} --pid OLD --standalone --json` with \
         the default options (`--timeout 30s`) but for back-to-back clients, where \
         `--timeout {BACK_TO_BACK_TIMEOUT}` is given (with the default each of those runs \
         would last 30 s); drain: its run time and exit codes (with the connections its \
         report lists as remaining at the deadline). Python websockets has no \
         graceful stop of its own: no rows for one. haproxy: over a server on \
         :{LB_STOPPED_PORT} (Go; apache2 with mpm_event, its graceful stop WINCH and its \
         fast stop TERM; Node.js) and a Go server on :{LB_OTHER_PORT} (round robin, health \
         checks every 500 ms, `retries 3`, `option redispatch`); the one on \
         :{LB_STOPPED_PORT} is stopped, no successor, drainctl `--port {LB_STOPPED_PORT}`; \
         \"ip netns exec drainctl\": the same drain run by `ip netns exec NAME`, alone in a \
         mount namespace where no bpffs outlives it. Part run time: {:.0} min.\n",
        WARM_UP.as_secs(),
        TAIL.as_secs(),
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        out,
        "| server | clients | stop | failed (median) | failed (max) | requests (median) | stop s (median / max) | drain s (median / max), exits |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---|");
    for (cell, runs) in cells.iter().zip(results) {
        let _ = writeln!(out, "{}", row(*cell, runs));
    }
    render_cost(&mut out, cells, results);
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

fn row(cell: Cell, runs: &[RunResult]) -> String {
    let label = format!(
        "| {} | {} | {} |",
        cell.server.label(),
        cell.clients.label(),
        cell.stop_label()
    );
    if runs.is_empty() {
        return format!("{label} — | — | — | — | — |");
    }
    let failed: Vec<u64> = runs.iter().map(|r| r.failed).collect();
    let totals: Vec<u64> = runs.iter().map(|r| r.total).collect();
    let stops: Vec<Duration> = runs.iter().map(|r| r.stop_time).collect();
    let drains: Vec<&Drain> = runs.iter().filter_map(|r| r.drain.as_ref()).collect();
    let drain = if drains.is_empty() {
        "—".to_string()
    } else {
        let walls: Vec<Duration> = drains.iter().map(|d| d.wall).collect();
        let exits: Vec<String> = drains
            .iter()
            .map(|d| match (d.code, d.remaining) {
                (Some(code), 0) => code.to_string(),
                (Some(code), left) => format!("{code} ({left} left)"),
                (None, _) => "signal".to_string(),
            })
            .collect();
        format!("{}, exit {}", seconds(&walls), exits.join(" "))
    };
    format!(
        "{label} {} | {} | {} | {} | {drain} |",
        median_u64(&failed),
        failed.iter().max().copied().unwrap_or(0),
        median_u64(&totals),
        seconds(&stops)
    )
}

/// drainctl's own CPU time per drain and per connection it closed, against `ss -tin`
/// polled at the drain's interval over the same runs (the ratio is the figure: the
/// machine is shared and noisy).
fn render_cost(out: &mut String, cells: &[Cell], results: &[Vec<RunResult>]) {
    let rows: Vec<String> = cells
        .iter()
        .zip(results)
        .filter_map(|(cell, runs)| cost_row(*cell, runs))
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### drainctl's own CPU time\n\nUser + system time of the drainctl process \
         (wait4), per drain and per connection it closed, against `ss -Htin state \
         established '( sport = :P )'` run every {} ms (drainctl's poll interval) while \
         the drain ran; medians over the runs.\n",
        DRAIN_POLL_INTERVAL.as_millis()
    );
    let _ = writeln!(
        out,
        "| server | clients | stop | drain s | closed | asked in-band | drainctl CPU ms | CPU ms per closed | ss -tin polled CPU ms | drainctl / ss |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(out, "{row}");
    }
}

fn cost_row(cell: Cell, runs: &[RunResult]) -> Option<String> {
    let drains: Vec<&Drain> = runs.iter().filter_map(|r| r.drain.as_ref()).collect();
    if drains.is_empty() {
        return None;
    }
    let median_of = |f: &dyn Fn(&Drain) -> Duration| {
        median(&drains.iter().map(|d| f(d)).collect::<Vec<_>>()).unwrap_or_default()
    };
    let wall = median_of(&|d| d.wall);
    let cpu = median_of(&|d| d.cpu);
    let peer = median_of(&|d| d.peer_cpu);
    let closed = median_u64(&drains.iter().map(|d| d.closed).collect::<Vec<_>>());
    let asked = median_u64(&drains.iter().map(|d| d.asked).collect::<Vec<_>>());
    let per_closed: Vec<Duration> = drains
        .iter()
        .filter(|d| d.closed > 0)
        .map(|d| d.cpu / u32::try_from(d.closed).unwrap_or(u32::MAX))
        .collect();
    let per_closed = median(&per_closed).map_or("—".to_string(), |d| format!("{:.2}", ms(d)));
    let ratios: Vec<Duration> = drains
        .iter()
        .filter(|d| !d.peer_cpu.is_zero())
        .map(|d| Duration::from_secs_f64(d.cpu.as_secs_f64() / d.peer_cpu.as_secs_f64()))
        .collect();
    let ratio = median(&ratios).map_or("—".to_string(), |r| format!("{:.2}", r.as_secs_f64()));
    Some(format!(
        "| {} | {} | {} | {:.1} | {closed} | {asked} | {:.0} | {per_closed} | {:.0} | {ratio} |",
        cell.server.label(),
        cell.clients.label(),
        cell.stop_label(),
        wall.as_secs_f64(),
        ms(cpu),
        ms(peer),
    ))
}

/// "median / max" in seconds, one decimal.
fn seconds(times: &[Duration]) -> String {
    let max = times.iter().max().copied().unwrap_or_default();
    let median = median(times).unwrap_or_default();
    format!("{:.1} / {:.1}", median.as_secs_f64(), max.as_secs_f64())
}

fn median_u64(values: &[u64]) -> u64 {
    let as_durations: Vec<Duration> = values.iter().map(|v| Duration::from_nanos(*v)).collect();
    median(&as_durations).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_has_its_stop_modes() {
        let cells = cells();
        // nginx, Go, haproxy → Go: 3 client profiles x 4 stops, and back to back under ip
        // netns exec; haproxy → apache2, Node.js: back to back x 5 stops; websockets: 1 x
        // (TERM, drainctl).
        assert_eq!(cells.len(), 3 * 3 * 4 + 1 + 2 * 5 + 2);
        assert!(cells
            .iter()
            .filter(|c| c.stop == Stop::DrainNetnsExec)
            .all(|c| matches!(c.server, Server::Haproxy(_)) && c.clients == Clients::BackToBack));
        assert!(cells
            .iter()
            .filter(|c| c.server == Server::Websockets)
            .all(|c| matches!(c.stop, Stop::Term | Stop::Drain)));
        let back_to_back = cells
            .iter()
            .find(|c| c.clients == Clients::BackToBack && c.stop == Stop::Drain)
            .unwrap();
        assert_eq!(
            back_to_back.stop_label(),
            "drainctl (--timeout 5s), then TERM"
        );
    }

    #[test]
    fn hey_tally_counts_errors_and_other_statuses() {
        let summary = "Summary:\n  Total:\t1.0 secs\n\nStatus code distribution:\n  \
                       [200]\t90 responses\n  [502]\t3 responses\n\nError distribution:\n  \
                       [4]\tPost \"http://127.0.0.1:8080/sleep/100\": EOF\n  [1]\tPost: reset\n";
        let (failed, total, detail) = hey_tally(HeyRun::parse(summary.to_string()));
        assert_eq!((failed, total), (8, 98));
        assert!(detail.contains("EOF"), "{detail}");
    }

    #[test]
    fn median_of_counts() {
        assert_eq!(median_u64(&[5, 1, 3]), 3);
        assert_eq!(median_u64(&[]), 0);
    }
}

//! `cargo xtask bench`: the connection-inventory benchmark (issue "Connection inventory at
//! scale"). `drainctl status --port P` must read a port's connections faster than `ss`,
//! at a cost that does not grow with the sockets on other ports, and in bounded memory;
//! this measures that on real sockets rather than arguing it.
//!
//! In a private network namespace, `drain-bench-farm` processes hold established
//! connections (both ends each, at most 9000 per process because of the open-files hard
//! limit, one listener address 127.0.0.K per farm). Three scenarios are built by adding
//! farms, never tearing down, so the first two hold the very same :8080 sockets and differ
//! only by 100k connections on another port:
//!
//! 1. 10k on :8080 alone,
//! 2. the same 10k on :8080 + 100k on :9000,
//! 3. 100k on :8080 + 100k on :9000.
//!
//! After `ss` confirms the counts, each tool is timed on the same sockets: `drainctl
//! status` (sock_diag, and forced to procfs), `ss -tin` and `ss -tinp` (the peers, without
//! and with owners, which status also resolves), and an in-process parser of
//! /proc/net/tcp{,6}. Child tools are timed from spawn to exit and their peak memory is
//! their own `ru_maxrss` from `wait4`. Every tool gets one warm-up run, then the timed runs
//! go round-robin over the tools so that a noisy moment hits them all. Machines are noisy,
//! so results are ratios to `ss -tin` measured in the same run; the markdown table is
//! printed and written to `target/bench/inventory.md`.
//!
//! A missing `drainctl status` (binary not built, or exit 2: no such subcommand or
//! option) is skipped with a note; a count that disagrees with the farms is reported as a
//! MISMATCH; a farm that does not start stops the bench with its name and stderr. Every
//! wait has a timeout, and farms are stopped (stdin closed, then SIGKILL if needed) on
//! every path; the namespace goes away with them.
//!
//! `bench_close.rs` adds the closing benchmark (issue "Closing without loss") on the same
//! farms, `bench_busy.rs` the stop of real servers under keep-alive load (issue "Drain a
//! busy server"); `--only inventory|closing|busy` runs one part.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use drain_tests::{set_echo, ChildGuard, EventReader, Netns};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, Pid, PidfdFlags};

use crate::{cargo, output_of};

/// Which part of the benchmark `--only` runs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// `drainctl status` against ss and /proc/net/tcp (target/bench/inventory.md).
    Inventory,
    /// `drainctl drain` closing idle connections against `ss -K` (target/bench/closing.md).
    Closing,
    /// Failed requests when a server under keep-alive load is stopped, per stop mode
    /// (target/bench/busy.md).
    Busy,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Inventory => "inventory",
            Part::Closing => "closing",
            Part::Busy => "busy",
        }
    }
}

/// The port whose connections are inventoried.
pub(crate) const PORT: u16 = 8080;
/// The port holding the "other" sockets, which the inventory of [`PORT`] must not pay for.
const OTHER_PORT: u16 = 9000;
/// Connections per farm: 2N + 1 descriptors must fit under the 20000 hard limit.
const PER_FARM: usize = 9000;
/// In-flight share of the connections on [`PORT`], per thousand (the rest are idle).
const IN_FLIGHT_PER_MILLE: usize = 10;
/// How long after the last farm is ready the measurements start: `drainctl status` counts
/// a connection in flight while data moved less than its quiet period (1 s) ago, and the
/// kernel stamps the connection's establishment as its last data.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest wait for a batch of farms to report `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest run of one tool (`ss -tinp` takes about 30 s at 100k + 100k).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// A tool that has spent this long in a scenario (warm-up included) stops after
/// [`MIN_RUNS`] timed runs, so a peer that takes half a minute a run does not stretch the
/// bench past a few minutes.
const TIME_BUDGET: Duration = Duration::from_secs(45);
/// Timed runs every tool gets, whatever its time.
const MIN_RUNS: usize = 3;
/// Longest wait for a farm to exit after its stdin closed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The state code of an established socket in /proc/net/tcp.
const TCP_ESTABLISHED: u8 = 1;

struct Scenario {
    name: &'static str,
    on_port: usize,
    on_other_port: usize,
}

/// In order: each scenario only adds farms to the previous one.
const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "10k on :8080 alone",
        on_port: 10_000,
        on_other_port: 0,
    },
    Scenario {
        name: "10k on :8080 + 100k on :9000",
        on_port: 10_000,
        on_other_port: 100_000,
    },
    Scenario {
        name: "100k on :8080 + 100k on :9000",
        on_port: 100_000,
        on_other_port: 100_000,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Status,
    StatusProcfs,
    Ss,
    SsOwners,
    ProcParse,
}

impl Tool {
    const ALL: [Tool; 5] = [
        Tool::Status,
        Tool::StatusProcfs,
        Tool::Ss,
        Tool::SsOwners,
        Tool::ProcParse,
    ];

    fn label(self) -> &'static str {
        match self {
            Tool::Status => "drainctl status (sock_diag)",
            Tool::StatusProcfs => "drainctl status --inventory-source procfs",
            Tool::Ss => "ss -tin",
            Tool::SsOwners => "ss -tinp",
            Tool::ProcParse => "parse /proc/net/tcp{,6} (in-process)",
        }
    }

    /// The `source` that `drainctl status --json` must report.
    fn status_source(self) -> Option<&'static str> {
        match self {
            Tool::Status => Some("sock_diag"),
            Tool::StatusProcfs => Some("procfs"),
            _ => None,
        }
    }
}

/// Runs the benchmark with `runs` timed runs per tool and scenario (the release binaries
/// must be built). Needs root (a network namespace, and `drainctl status` reads owners).
///
/// The /proc/net/tcp peer is parsed in this process, and unoptimised it parses two to
/// three times slower than it deserves; `cargo xtask` is a debug build, so a debug build
/// hands the measurement over to the release build of xtask (made by the release build
/// of the workspace).
pub fn run(runs: usize, busy: &crate::bench_busy::Options, only: Option<Part>) -> Result<()> {
    ensure!(runs >= 1, "--runs must be at least 1");
    let target = target_dir()?;
    let release = target.join("release");
    if cfg!(debug_assertions) {
        let xtask = release.join("xtask");
        ensure!(
            xtask.is_file(),
            "{} is missing: build with `cargo build --release --workspace --exclude drain-ebpf --bins`",
            xtask.display()
        );
        let mut command = Command::new(xtask);
        command.args(["bench", "--no-build", "--runs", &runs.to_string()]);
        command.args(busy.to_args());
        if let Some(part) = only {
            command.args(["--only", part.name()]);
        }
        return crate::run(&mut command);
    }
    set_echo(false);
    let farm_bin = release.join("drain-bench-farm");
    ensure!(
        farm_bin.is_file(),
        "{} is missing: build with `cargo build --release --workspace --exclude drain-ebpf --bins`",
        farm_bin.display()
    );
    let drainctl = release.join("drainctl");
    let machine = Machine::describe();
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let runs_part = |part: Part| only.is_none_or(|only| only == part);
    if runs_part(Part::Inventory) {
        let report = inventory(runs, &farm_bin, &drainctl, &machine)?;
        write_report(&dir, Part::Inventory, &report)?;
    }
    if runs_part(Part::Closing) {
        let report = crate::bench_close::run(&machine, &farm_bin, &drainctl)?;
        write_report(&dir, Part::Closing, &report)?;
    }
    if runs_part(Part::Busy) {
        let report = crate::bench_busy::run(&machine, busy, &target, &release)?;
        write_report(&dir, Part::Busy, &report)?;
    }
    Ok(())
}

/// Prints a part's markdown report and writes it to `dir/<part>.md`.
fn write_report(dir: &Path, part: Part, report: &str) -> Result<()> {
    println!("\n{report}");
    let path = dir.join(format!("{}.md", part.name()));
    std::fs::write(&path, report).with_context(|| format!("write {}", path.display()))?;
    println!("bench: written to {}", path.display());
    Ok(())
}

/// The inventory part: three scenarios, every tool timed on each.
fn inventory(runs: usize, farm_bin: &Path, drainctl: &Path, machine: &Machine) -> Result<String> {
    let netns = Netns::new().context("creating a private network namespace (run as root)")?;
    tune_namespace()?;
    let mut farms = Farms::new(farm_bin.to_path_buf(), false);
    let mut results = Vec::new();
    for scenario in &SCENARIOS {
        println!("bench: scenario {}", scenario.name);
        farms.grow_to(PORT, scenario.on_port)?;
        farms.grow_to(OTHER_PORT, scenario.on_other_port)?;
        std::thread::sleep(SETTLE);
        for (port, expected) in [
            (PORT, scenario.on_port),
            (OTHER_PORT, scenario.on_other_port),
        ] {
            let seen = count_established(port)?;
            ensure!(
                seen == expected,
                "ss counts {seen} established connections with sport :{port}, the farms hold \
                 {expected}"
            );
        }
        let expected = Expected {
            total: scenario.on_port,
            in_flight: farms.in_flight(PORT),
        };
        results.push(measure_scenario(scenario, drainctl, &expected, runs));
    }
    let problems = farms.stop();
    drop(netns);

    Ok(render(
        machine,
        runs,
        &results,
        &farms.setup_notes,
        &problems,
    ))
}

fn target_dir() -> Result<PathBuf> {
    let metadata =
        output_of(Command::new(cargo()).args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed no JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("`cargo metadata` has no target_directory"))
}

/// Widens the ephemeral port range of the namespace (each listener address then takes up
/// to 64k client ports) and reserves the two listened ports, so no client socket ever has
/// local port 8080 or 9000 and `sport = :8080` selects server sides only.
pub(crate) fn tune_namespace() -> Result<()> {
    set_sysctl("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
    set_sysctl(
        "/proc/sys/net/ipv4/ip_local_reserved_ports",
        &format!("{PORT},{OTHER_PORT}"),
    )
}

/// Writes a net sysctl from a child process: the child is in this thread's namespace
/// whatever the main thread is in (`/proc/self` follows the main thread).
fn set_sysctl(path: &str, value: &str) -> Result<()> {
    let out = Command::new("sh")
        .args(["-c", "printf '%s\\n' \"$1\" > \"$2\"", "sh", value, path])
        .output()
        .context("spawn sh")?;
    ensure!(
        out.status.success(),
        "writing {value:?} to {path} in the namespace failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Farms
// ---------------------------------------------------------------------------------------

struct Farm {
    label: String,
    port: u16,
    connections: usize,
    in_flight: usize,
    child: ChildGuard,
    /// Closing it stops the farm (it exits on end of file).
    stdin: Option<ChildStdin>,
    stdout: EventReader,
    stderr: EventReader,
}

impl Farm {
    fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let expected = format!("ready {}", self.connections);
        match self.stdout.wait_for("ready ", left) {
            Some(line) if line.trim() == expected => Ok(()),
            Some(line) => bail!(
                "farm {} printed {line:?}, expected {expected:?}",
                self.label
            ),
            None => {
                let status = match self.child.wait_timeout(Duration::from_millis(500)) {
                    Ok(Some(status)) => format!("exited: {status}"),
                    Ok(None) => "still running".to_string(),
                    Err(e) => format!("state unknown: {e}"),
                };
                self.stderr.wait_ended(Duration::from_secs(1));
                let stderr = self.stderr.all_lines().join(" | ");
                bail!(
                    "farm {} did not report `{expected}` ({status}; waited up to {} s); \
                     stderr: {}",
                    self.label,
                    READY_TIMEOUT.as_secs(),
                    if stderr.is_empty() {
                        "(empty)"
                    } else {
                        &stderr
                    }
                )
            }
        }
    }
}

pub(crate) struct Farms {
    bin: PathBuf,
    /// Farms started with `--close-on-eof` (the closing benchmark), without in-flight ones.
    close_on_eof: bool,
    farms: Vec<Farm>,
    /// K of the next listener address 127.0.0.K.
    next_host: u8,
    /// One line per batch of farms: how long the connections took to build.
    pub(crate) setup_notes: Vec<String>,
}

impl Farms {
    pub(crate) fn new(bin: PathBuf, close_on_eof: bool) -> Farms {
        Farms {
            bin,
            close_on_eof,
            farms: Vec::new(),
            next_host: 1,
            setup_notes: Vec::new(),
        }
    }

    fn total(&self, port: u16) -> usize {
        self.farms
            .iter()
            .filter(|f| f.port == port)
            .map(|f| f.connections)
            .sum()
    }

    fn in_flight(&self, port: u16) -> usize {
        self.farms
            .iter()
            .filter(|f| f.port == port)
            .map(|f| f.in_flight)
            .sum()
    }

    /// Adds farms until `target` connections are established on `port`; all the new farms
    /// work in parallel. On error the new farms are killed (their guards drop).
    pub(crate) fn grow_to(&mut self, port: u16, target: usize) -> Result<()> {
        let missing = target.saturating_sub(self.total(port));
        if missing == 0 {
            return Ok(());
        }
        let count = missing.div_ceil(PER_FARM);
        let started = Instant::now();
        let mut new = Vec::with_capacity(count);
        for i in 0..count {
            let connections = missing / count + usize::from(i < missing % count);
            new.push(self.spawn(port, connections)?);
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for farm in &mut new {
            farm.wait_ready(deadline)?;
        }
        let note = format!(
            "+{missing} connections on :{port} in {count} farms: ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        println!("bench: {note}");
        self.setup_notes.push(note);
        self.farms.extend(new);
        Ok(())
    }

    fn spawn(&mut self, port: u16, connections: usize) -> Result<Farm> {
        let host = self.next_host;
        self.next_host = host
            .checked_add(1)
            .filter(|next| *next < 255)
            .ok_or_else(|| anyhow!("out of listener addresses 127.0.0.1-254"))?;
        let listen = format!("127.0.0.{host}:{port}");
        let in_flight = if port == PORT && !self.close_on_eof {
            connections * IN_FLIGHT_PER_MILLE / 1000
        } else {
            0
        };
        let mut child = Command::new(&self.bin)
            .args(["--listen", &listen])
            .args(["--connections", &connections.to_string()])
            .args(if self.close_on_eof {
                vec!["--close-on-eof".to_string()]
            } else {
                vec!["--in-flight".to_string(), in_flight.to_string()]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let label = format!("{listen} ({connections} connections, pid {})", child.id());
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let child = ChildGuard(child);
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            bail!("farm {label}: no stdout/stderr pipe");
        };
        Ok(Farm {
            stdout: EventReader::from_reader(&format!("farm {listen}"), stdout),
            stderr: EventReader::from_reader(&format!("farm {listen} stderr"), stderr),
            label,
            port,
            connections,
            in_flight,
            child,
            stdin,
        })
    }

    /// Closes every farm's stdin (they exit and close their sockets in parallel), then
    /// waits for each; a farm still running at its timeout is killed by its guard.
    /// Returns what went wrong, for the report.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        let started = Instant::now();
        for farm in &mut self.farms {
            farm.stdin.take();
        }
        let mut problems = Vec::new();
        for mut farm in self.farms.drain(..) {
            match farm.child.wait_timeout(STOP_TIMEOUT) {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => problems.push(format!("farm {} {status}", farm.label)),
                Ok(None) => problems.push(format!(
                    "farm {} still running {}s after its stdin closed: killed",
                    farm.label,
                    STOP_TIMEOUT.as_secs()
                )),
                Err(e) => problems.push(format!("farm {}: wait failed: {e}", farm.label)),
            }
        }
        println!(
            "bench: farms stopped in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        problems
    }

    /// `--close-on-eof` farms: waits up to `timeout` for every farm's `all-closed`, then
    /// stops them and gathers their client-side close times (CLOCK_MONOTONIC ns, sorted)
    /// and reset count. A farm that does not report fails the call (the farms are killed
    /// by their guards); problems on the way out are returned as notes.
    pub(crate) fn collect_closes(
        &mut self,
        timeout: Duration,
    ) -> Result<(Vec<u64>, usize, Vec<String>)> {
        let deadline = Instant::now() + timeout;
        let mut notes = Vec::new();
        for farm in &self.farms {
            let left = deadline.saturating_duration_since(Instant::now());
            if farm.stdout.wait_for("all-closed ", left).is_none() {
                notes.push(format!(
                    "farm {}: not every client side closed within {} s",
                    farm.label,
                    timeout.as_secs()
                ));
            }
        }
        for farm in &mut self.farms {
            farm.stdin.take();
        }
        let mut times = Vec::new();
        let mut resets = 0;
        for farm in &self.farms {
            let closes = farm.stdout.wait_for("closes", STOP_TIMEOUT);
            let reset_line = farm.stdout.wait_for("resets ", STOP_TIMEOUT);
            let (Some(closes), Some(reset_line)) = (closes, reset_line) else {
                bail!("farm {} printed no `closes`/`resets` line", farm.label);
            };
            for t in closes.split_ascii_whitespace().skip(1) {
                times.push(
                    t.parse::<u64>()
                        .with_context(|| format!("farm {}: bad close time {t:?}", farm.label))?,
                );
            }
            resets += reset_line
                .trim_start_matches("resets ")
                .trim()
                .parse::<usize>()
                .with_context(|| format!("farm {}: bad {reset_line:?}", farm.label))?;
        }
        notes.extend(self.stop());
        times.sort_unstable();
        Ok((times, resets, notes))
    }
}

// ---------------------------------------------------------------------------------------
// Child processes: wall clock and their own peak memory
// ---------------------------------------------------------------------------------------

pub(crate) struct ChildRun {
    pub(crate) wall: Duration,
    /// User + system CPU time of the child itself (wait4).
    pub(crate) cpu: Duration,
    pub(crate) max_rss_kib: u64,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
}

impl ChildRun {
    pub(crate) fn stderr_line(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr);
        stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no stderr)")
            .trim()
            .to_string()
    }
}

/// Runs `command` in this thread's namespace (stdin from /dev/null, stdout captured or
/// discarded, stderr captured), timed from spawn to exit, and reaps it with `wait4` for
/// its own `ru_maxrss`. Killed after `timeout`.
pub(crate) fn run_child(
    command: &mut Command,
    capture_stdout: bool,
    timeout: Duration,
) -> Result<ChildRun> {
    command
        .stdin(Stdio::null())
        .stdout(if capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().map(read_to_end_in_thread);
    let stderr = child.stderr.take().map(read_to_end_in_thread);
    match wait_exited(&child, started + timeout) {
        Ok(true) => {}
        Ok(false) => {
            kill_and_reap(&mut child);
            bail!(
                "{command:?} still running after {}s: killed",
                timeout.as_secs()
            );
        }
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(e);
        }
    }
    let wall = started.elapsed();
    let (status, max_rss_kib, cpu) = reap_with_usage(&child)?;
    let join = |reader: Option<JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    };
    Ok(ChildRun {
        wall,
        cpu,
        max_rss_kib,
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

pub(crate) fn read_to_end_in_thread(mut source: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only truncates the output, which the caller then fails to parse.
        let _ = source.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for the child to exit without reaping it (its pidfd turns readable), so that
/// `wait4` can still collect its resource usage. `Ok(false)` at the deadline.
fn wait_exited(child: &Child, deadline: Instant) -> Result<bool> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| anyhow!("bad child pid {}", child.id()))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).context("pidfd_open")?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let timeout = Timespec::try_from(left).context("timeout out of range")?;
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => return Ok(true),
            Err(e) => return Err(e).context("poll(pidfd)"),
        }
    }
}

/// Reaps an exited child with `wait4`, which returns that child's own resource usage
/// (`getrusage(RUSAGE_CHILDREN)` would be the maximum over every child reaped so far).
/// Returns its exit status, peak resident set in KiB and CPU time (user + system).
fn reap_with_usage(child: &Child) -> Result<(ExitStatus, u64, Duration)> {
    let pid = libc::pid_t::try_from(child.id()).context("child pid")?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid for writes of their types; `pid` is our
        // own child, exited and not reaped yet (std never reaps behind our back).
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if reaped == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    // SAFETY: zeroed is a valid `rusage` (integers only), and wait4 has filled it in.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok((
        ExitStatus::from_raw(status),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
        time(usage.ru_utime) + time(usage.ru_stime),
    ))
}

/// For error paths only: the child is not reaped yet, so its pid is still ours.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// `ss -Htn state established '( sport = :PORT )'`, counted.
pub(crate) fn count_established(port: u16) -> Result<usize> {
    let run = run_child(&mut ss("-Htn", port), true, RUN_TIMEOUT)?;
    ensure!(
        run.status.success(),
        "ss failed ({}): {}",
        run.status,
        run.stderr_line()
    );
    Ok(run
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count())
}

pub(crate) fn ss(flags: &str, port: u16) -> Command {
    let mut command = Command::new("ss");
    command.args([
        flags,
        "state",
        "established",
        &format!("( sport = :{port} )"),
    ]);
    command
}

// ---------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------

/// What the farms hold on [`PORT`].
struct Expected {
    total: usize,
    in_flight: usize,
}

/// One run of one tool.
struct Sample {
    wall: Duration,
    /// `None` for the in-process parser.
    max_rss_kib: Option<u64>,
    /// Established connections on [`PORT`] the tool reported, when it reports a count.
    total: Option<usize>,
    /// Connections it judged in flight, when it says.
    in_flight: Option<usize>,
    /// `source` of `drainctl status --json`.
    source: Option<String>,
}

enum Failure {
    /// The tool is not there (yet): skipped with a note.
    Unavailable(String),
    Failed(String),
}

struct ToolResult {
    tool: Tool,
    walls: Vec<Duration>,
    /// Time spent on the tool in this scenario, warm-up included (for [`TIME_BUDGET`]).
    spent: Duration,
    max_rss_kib: Option<u64>,
    /// Why there are no figures (skipped or failed).
    note: Option<String>,
    /// The first disagreement with the farms, if any.
    mismatch: Option<String>,
}

struct ScenarioResult {
    name: &'static str,
    tools: Vec<ToolResult>,
}

fn measure_scenario(
    scenario: &Scenario,
    drainctl: &Path,
    expected: &Expected,
    runs: usize,
) -> ScenarioResult {
    let mut tools: Vec<ToolResult> = Tool::ALL
        .iter()
        .map(|&tool| ToolResult {
            tool,
            walls: Vec::new(),
            spent: Duration::ZERO,
            max_rss_kib: None,
            note: None,
            mismatch: None,
        })
        .collect();
    // Run 0 is the warm-up (the first owner lookup after new farms also fills the kernel's
    // /proc caches): it also finds out whether the tool is there.
    let within_budget = |r: &ToolResult| r.walls.len() < MIN_RUNS || r.spent < TIME_BUDGET;
    for run in 0..=runs {
        for result in tools
            .iter_mut()
            .filter(|r| r.note.is_none() && within_budget(r))
        {
            match measure_once(result.tool, drainctl) {
                Ok(sample) => {
                    result.spent += sample.wall;
                    check(result, &sample, expected, scenario.name, run > 0);
                    if run > 0 {
                        result.walls.push(sample.wall);
                        result.max_rss_kib = result.max_rss_kib.max(sample.max_rss_kib);
                    }
                }
                Err(Failure::Unavailable(why)) => result.note = Some(format!("skipped: {why}")),
                Err(Failure::Failed(why)) => {
                    let when = if run == 0 {
                        "warm-up".to_string()
                    } else {
                        format!("run {run}")
                    };
                    eprintln!(
                        "bench: {} failed ({}, {when}): {why}",
                        result.tool.label(),
                        scenario.name
                    );
                    result.note = Some(format!("failed on the {when}: {why}"));
                }
            }
        }
    }
    for result in &tools {
        match (&result.note, median(&result.walls)) {
            (Some(note), _) => println!("bench:   {:<45} {note}", result.tool.label()),
            (None, Some(median)) => println!(
                "bench:   {:<45} median {:8.1} ms ({} runs)",
                result.tool.label(),
                ms(median),
                result.walls.len()
            ),
            (None, None) => {}
        }
    }
    ScenarioResult {
        name: scenario.name,
        tools,
    }
}

/// Compares what a tool counted with what the farms hold; the first disagreement is
/// kept and printed loudly. The in-flight split is judged by `drainctl status` with a
/// quiet period, so it is only compared on timed runs (the connections are older then)
/// and only for sock_diag (procfs judges nothing idle).
fn check(
    result: &mut ToolResult,
    sample: &Sample,
    expected: &Expected,
    scenario: &str,
    timed: bool,
) {
    if result.mismatch.is_some() {
        return;
    }
    let mut problems = Vec::new();
    if let Some(total) = sample.total {
        if total != expected.total {
            problems.push(format!(
                "counted {total} connections on :{PORT}, ss and the farms {}",
                expected.total
            ));
        }
    }
    if let (Some(want), Some(got)) = (result.tool.status_source(), sample.source.as_deref()) {
        if want != got {
            problems.push(format!("reported source {got:?}, expected {want:?}"));
        }
    }
    let judges_in_flight = matches!(result.tool, Tool::Status | Tool::ProcParse);
    if let (true, true, Some(in_flight)) = (timed, judges_in_flight, sample.in_flight) {
        if in_flight != expected.in_flight {
            problems.push(format!(
                "counted {in_flight} in flight, the farms sent {} unread requests",
                expected.in_flight
            ));
        }
    }
    if !problems.is_empty() {
        let text = problems.join("; ");
        eprintln!(
            "bench: MISMATCH {} ({scenario}): {text}",
            result.tool.label()
        );
        result.mismatch = Some(text);
    }
}

fn measure_once(tool: Tool, drainctl: &Path) -> Result<Sample, Failure> {
    match tool {
        Tool::Status | Tool::StatusProcfs => {
            if !drainctl.is_file() {
                return Err(Failure::Unavailable(format!(
                    "{} is not built",
                    drainctl.display()
                )));
            }
            let mut command = Command::new(drainctl);
            command.args(["status", "--port", &PORT.to_string(), "--json"]);
            if tool == Tool::StatusProcfs {
                command.args(["--inventory-source", "procfs"]);
            }
            let run = run_child(&mut command, true, RUN_TIMEOUT)
                .map_err(|e| Failure::Failed(format!("{e:#}")))?;
            match run.status.code() {
                Some(0) => {}
                // 2 is drainctl's "bad arguments": no `status` or no such option yet.
                Some(2) => {
                    return Err(Failure::Unavailable(format!(
                        "this drainctl does not accept `{}` (exit 2: {})",
                        tool.label(),
                        run.stderr_line()
                    )))
                }
                _ => {
                    return Err(Failure::Failed(format!(
                        "{}: {}",
                        run.status,
                        run.stderr_line()
                    )))
                }
            }
            let (total, in_flight, source) = status_counts(&run.stdout).map_err(Failure::Failed)?;
            Ok(Sample {
                wall: run.wall,
                max_rss_kib: Some(run.max_rss_kib),
                total: Some(total),
                in_flight,
                source,
            })
        }
        Tool::Ss | Tool::SsOwners => {
            let flags = if tool == Tool::Ss { "-Htin" } else { "-Htinp" };
            let run = run_child(&mut ss(flags, PORT), false, RUN_TIMEOUT)
                .map_err(|e| Failure::Failed(format!("{e:#}")))?;
            if !run.status.success() {
                return Err(Failure::Failed(format!(
                    "{}: {}",
                    run.status,
                    run.stderr_line()
                )));
            }
            Ok(Sample {
                wall: run.wall,
                max_rss_kib: Some(run.max_rss_kib),
                total: None,
                in_flight: None,
                source: None,
            })
        }
        Tool::ProcParse => {
            let started = Instant::now();
            let sockets = scan_proc_net_tcp(PORT).map_err(|e| Failure::Failed(format!("{e:#}")))?;
            let wall = started.elapsed();
            Ok(Sample {
                wall,
                max_rss_kib: None,
                total: Some(sockets.len()),
                in_flight: Some(
                    sockets
                        .iter()
                        .filter(|s| s.rx_queue > 0 || s.tx_queue > 0)
                        .count(),
                ),
                source: None,
            })
        }
    }
}

/// `connections.total`, `connections.in_flight` of [`PORT`] and `source` from
/// `drainctl status --json`.
fn status_counts(stdout: &[u8]) -> Result<(usize, Option<usize>, Option<String>), String> {
    let json: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| {
        format!(
            "stdout is not one JSON object ({e}): {:.200}",
            String::from_utf8_lossy(stdout)
        )
    })?;
    let port = json["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["port"] == PORT))
        .ok_or_else(|| format!("no port {PORT} in the JSON"))?;
    let count = |field: &str| {
        port["connections"][field]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
    };
    let total = count("total").ok_or("no connections.total in the JSON")?;
    Ok((
        total,
        count("in_flight"),
        json["source"].as_str().map(str::to_string),
    ))
}

// ---------------------------------------------------------------------------------------
// The /proc/net/tcp peer
// ---------------------------------------------------------------------------------------

/// One line of /proc/net/tcp or tcp6, the fields an inventory needs.
#[derive(Debug, PartialEq, Eq)]
struct ProcTcpSocket {
    local: SocketAddr,
    /// Parsed as an inventory needs it (the peer, the owner by inode); the bench only
    /// counts.
    #[allow(dead_code)]
    remote: SocketAddr,
    state: u8,
    tx_queue: u32,
    rx_queue: u32,
    #[allow(dead_code)]
    inode: u64,
}

/// What a tool without sock_diag does: reads /proc/net/tcp and tcp6 of this thread's
/// namespace (`/proc/thread-self`: `/proc/self/net` shows the main thread's), parses every
/// line, and keeps the established sockets with local port `port`.
fn scan_proc_net_tcp(port: u16) -> Result<Vec<ProcTcpSocket>> {
    let mut kept = Vec::new();
    for (path, v6) in [
        ("/proc/thread-self/net/tcp", false),
        ("/proc/thread-self/net/tcp6", true),
    ] {
        let file = File::open(path).with_context(|| format!("open {path}"))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut line = String::new();
        let mut header = true;
        loop {
            line.clear();
            if reader
                .read_line(&mut line)
                .with_context(|| format!("read {path}"))?
                == 0
            {
                break;
            }
            if std::mem::take(&mut header) {
                continue;
            }
            let socket = parse_proc_tcp_line(&line, v6)
                .ok_or_else(|| anyhow!("{path}: cannot parse {:?}", line.trim_end()))?;
            if socket.state == TCP_ESTABLISHED && socket.local.port() == port {
                kept.push(socket);
            }
        }
    }
    Ok(kept)
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, addresses in hex as
/// the kernel prints them (IPv4 as one native-endian u32, IPv6 as four, ports big-endian).
fn parse_proc_tcp_line(line: &str, v6: bool) -> Option<ProcTcpSocket> {
    let mut fields = line.split_ascii_whitespace();
    let _slot = fields.next()?;
    let local = parse_proc_addr(fields.next()?, v6)?;
    let remote = parse_proc_addr(fields.next()?, v6)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (tx, rx) = fields.next()?.split_once(':')?;
    let tx_queue = u32::from_str_radix(tx, 16).ok()?;
    let rx_queue = u32::from_str_radix(rx, 16).ok()?;
    let _timer = fields.next()?;
    let _retransmits = fields.next()?;
    let _uid = fields.next()?;
    let _timeout = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    Some(ProcTcpSocket {
        local,
        remote,
        state,
        tx_queue,
        rx_queue,
        inode,
    })
}

fn parse_proc_addr(field: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        ip.get(i * 8..i * 8 + 8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match (v6, ip.len()) {
        (false, 8) => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        (true, 32) => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

pub(crate) struct Machine {
    pub(crate) cores: String,
    pub(crate) kernel: String,
    pub(crate) ss: String,
    pub(crate) date: String,
    /// The commit measured, and whether the working tree differed from it.
    pub(crate) revision: String,
}

impl Machine {
    /// The report line naming the machine, the date and the revision measured.
    pub(crate) fn header(&self) -> String {
        format!(
            "machine: {} cores, kernel {}, {}  \ndate: {}, revision {}  \n",
            self.cores, self.kernel, self.ss, self.date, self.revision
        )
    }
}

impl Machine {
    /// Best effort: a missing piece reads "unknown" rather than failing the bench.
    fn describe() -> Machine {
        let unknown = |_| "unknown".to_string();
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.to_string())
                .unwrap_or_else(unknown),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(unknown),
            ss: output_of(Command::new("ss").arg("-V"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string()),
            date: output_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string()),
            revision: output_of(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
                .map(|rev| {
                    let dirty = output_of(Command::new("git").args([
                        "status",
                        "--porcelain",
                        "--untracked-files=no",
                    ]))
                    .is_ok_and(|changes| !changes.trim().is_empty());
                    let rev = rev.trim();
                    if dirty {
                        format!("{rev} + uncommitted changes")
                    } else {
                        rev.to_string()
                    }
                })
                .unwrap_or_else(|_| "unknown".to_string()),
        }
    }
}

pub(crate) fn median(walls: &[Duration]) -> Option<Duration> {
    let mut sorted = walls.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn render(
    machine: &Machine,
    runs: usize,
    results: &[ScenarioResult],
    setup_notes: &[String],
    problems: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Connection inventory at scale: `drainctl status --port {PORT}` against ss and /proc/net/tcp\n"
    );
    let _ = writeln!(out, "{}", machine.header());
    let _ = writeln!(
        out,
        "{runs} timed runs per tool after one warm-up (a tool that has taken {} s in a \
         scenario stops after {MIN_RUNS}), tools interleaved; wall clock from spawn \
         to exit (the /proc/net/tcp parser: in-process, read + parse); max RSS is the \
         process's own ru_maxrss from wait4. Ratio: median / median of `ss -tin` in the same \
         scenario (below 1 is faster than ss). Connections on :{PORT}: {IN_FLIGHT_PER_MILLE}‰ \
         in flight (18 unread bytes), the rest idle; all on loopback in a private netns.\n",
        TIME_BUDGET.as_secs()
    );
    let _ = writeln!(
        out,
        "| scenario | tool | median ms | min ms | ratio to ss -tin | max RSS MiB |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for scenario in results {
        let ss_median = scenario
            .tools
            .iter()
            .find(|t| t.tool == Tool::Ss && t.note.is_none())
            .and_then(|t| median(&t.walls));
        for tool in &scenario.tools {
            let label = tool.tool.label();
            if let Some(note) = &tool.note {
                notes.push(format!("{} ({}): {note}", label, scenario.name));
                let _ = writeln!(out, "| {} | {label} | — | — | — | — |", scenario.name);
                continue;
            }
            if let Some(mismatch) = &tool.mismatch {
                notes.push(format!("MISMATCH {label} ({}): {mismatch}", scenario.name));
            }
            if (1..runs).contains(&tool.walls.len()) {
                notes.push(format!(
                    "{label} ({}): {} timed runs, not {runs} ({:.0} s spent, over the {} s \
                     budget)",
                    scenario.name,
                    tool.walls.len(),
                    tool.spent.as_secs_f64(),
                    TIME_BUDGET.as_secs()
                ));
            }
            let (Some(median), Some(min)) = (median(&tool.walls), tool.walls.iter().min()) else {
                continue;
            };
            let ratio = ss_median
                .map(|ss| format!("{:.2}", median.as_secs_f64() / ss.as_secs_f64()))
                .unwrap_or_else(|| "—".to_string());
            let rss = tool
                .max_rss_kib
                .map(|kib| format!("{:.1}", kib as f64 / 1024.0))
                .unwrap_or_else(|| "—".to_string());
            let flag = if tool.mismatch.is_some() { " ⚠" } else { "" };
            let _ = writeln!(
                out,
                "| {} | {label}{flag} | {:.1} | {:.1} | {ratio} | {rss} |",
                scenario.name,
                ms(median),
                ms(*min)
            );
        }
    }

    // Scenario 1 and 2 hold the same :8080 sockets; only :9000 differs.
    if let [alone, with_other, ..] = results {
        let _ = writeln!(
            out,
            "\nCost of 100k sockets on another port (same 10k on :{PORT}; growth = median with / \
             median without; 1.00 means no cost):\n"
        );
        let _ = writeln!(
            out,
            "| tool | {} ms | {} ms | growth |",
            alone.name, with_other.name
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (a, b) in alone.tools.iter().zip(&with_other.tools) {
            let (Some(ma), Some(mb)) = (median(&a.walls), median(&b.walls)) else {
                continue;
            };
            if a.note.is_some() || b.note.is_some() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.2} |",
                a.tool.label(),
                ms(ma),
                ms(mb),
                mb.as_secs_f64() / ma.as_secs_f64()
            );
        }
    }

    let _ = writeln!(out, "\nSetup: {}.", setup_notes.join("; "));
    notes.extend(problems.iter().cloned());
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_lines() {
        let v4 = "   12: 0100007F:1F90 0200007F:A2F4 01 00000000:00000012 00:00000000 00000000     0        0 48213 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_proc_tcp_line(v4, false),
            Some(ProcTcpSocket {
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.2:41716".parse().unwrap(),
                state: TCP_ESTABLISHED,
                tx_queue: 0,
                rx_queue: 18,
                inode: 48213,
            })
        );
        let v6 = "    0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0\n";
        let socket = parse_proc_tcp_line(v6, true).unwrap();
        assert_eq!(socket.local, "[::1]:8080".parse().unwrap());
        assert_eq!(socket.state, 0x0A);
        assert_eq!(socket.inode, 23456);
        assert_eq!(
            parse_proc_tcp_line("  sl  local_address rem_address", false),
            None
        );
        assert_eq!(parse_proc_tcp_line(v6, false), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let d = Duration::from_millis;
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[d(5), d(1), d(3)]), Some(d(3)));
        assert_eq!(
            median(&[d(4), d(1), d(3), d(2)]),
            Some(Duration::from_micros(2500))
        );
    }
}

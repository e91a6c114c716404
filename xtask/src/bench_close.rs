//! The closing benchmark of `cargo xtask bench` (issue "Closing without loss"): closing
//! idle connections from outside must cost about what `ss -K` costs, yet close every one
//! gracefully (the peer reads EOF, never a reset), and a spread drain must turn the
//! reconnect storm of an all-at-once close into an even rate on the peer side. This
//! measures both on real sockets.
//!
//! Every run gets a fresh private network namespace and fresh `drain-bench-farm
//! --close-on-eof` farms on :8080 (closing consumes them): the farms close a server side
//! that reads EOF, as a real server does, and record when each client side read EOF or a
//! reset. `drainctl drain --standalone --spread 0s --quiet-period 0s` (so its own CPU is
//! measured, not a daemon's) and `ss -K` are timed from spawn to exit with CPU and peak
//! memory from `wait4`, interleaved, median of [`RUNS`]. The spread table is computed from
//! the client-side close times in 100 ms slices. Errors in one run become notes; farms are
//! killed by their guards on every path.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use drain_tests::Netns;

use crate::bench::{
    count_established, median, ms, run_child, ss, tune_namespace, Farms, Machine, PORT,
};

/// Idle connections closed per run.
const SIZES: [usize; 2] = [10_000, 100_000];
/// Runs per closer and size (median reported).
const RUNS: usize = 3;
/// Connections of the spread runs, and the spread.
const SPREAD_CONNECTIONS: usize = 10_000;
const SPREAD: &str = "5s";
/// The slice the peer-side close rate is counted in.
const SLICE_NS: u64 = 100_000_000;
/// Longest run of `drainctl drain` (its own `--timeout` is 120 s) or `ss -K`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(150);
/// Longest wait, after the closer exited, for the farms to see every client side closed.
const ALL_CLOSED_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the farms being ready and the closer starting.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Closer {
    /// `drainctl drain` with this `--spread`.
    Drain(&'static str),
    SsKill,
}

impl Closer {
    fn label(self) -> String {
        match self {
            Closer::Drain(spread) => format!("drainctl drain --spread {spread}"),
            Closer::SsKill => "ss -K".to_string(),
        }
    }

    fn command(self, drainctl: &Path) -> Command {
        match self {
            Closer::Drain(spread) => {
                let mut command = Command::new(drainctl);
                command.args(["drain", "--port", &PORT.to_string(), "--spread", spread]);
                command.args(["--quiet-period", "0s", "--timeout", "120s", "--json"]);
                command.arg("--standalone");
                command
            }
            Closer::SsKill => ss("-K", PORT),
        }
    }
}

/// One closing run, measured.
struct CloseRun {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
    /// Client-side close times (CLOCK_MONOTONIC ns, sorted).
    closes: Vec<u64>,
    resets: usize,
    /// Last client-side close, after the closer was spawned.
    last_close: Option<Duration>,
}

/// Runs both tables; returns the markdown report.
pub fn run(machine: &Machine, farm_bin: &Path, drainctl: &Path) -> Result<String> {
    ensure!(
        drainctl.is_file(),
        "{} is missing: build the release binaries",
        drainctl.display()
    );
    let mut notes = Vec::new();
    let mut table = Vec::new();
    for n in SIZES {
        let mut drains = Vec::new();
        let mut kills = Vec::new();
        for run in 1..=RUNS {
            for closer in [Closer::Drain("0s"), Closer::SsKill] {
                println!(
                    "bench: closing {n} with {} (run {run}/{RUNS})",
                    closer.label()
                );
                match close_once(closer, n, farm_bin, drainctl, &mut notes) {
                    Ok(result) if closer == Closer::SsKill => kills.push(result),
                    Ok(result) => drains.push(result),
                    Err(e) => notes.push(format!("{} on {n}: {e:#}", closer.label())),
                }
            }
        }
        table.push((n, drains, kills));
    }
    let mut spreads = Vec::new();
    for spread in [SPREAD, "0s"] {
        let closer = Closer::Drain(spread);
        println!(
            "bench: spread smoothness, {SPREAD_CONNECTIONS} with {}",
            closer.label()
        );
        match close_once(closer, SPREAD_CONNECTIONS, farm_bin, drainctl, &mut notes) {
            Ok(result) => spreads.push((closer, result)),
            Err(e) => notes.push(format!("{} (spread): {e:#}", closer.label())),
        }
    }
    Ok(render(machine, &table, &spreads, &notes))
}

/// Fresh namespace and farms holding `n` idle connections on [`PORT`], closed by `closer`.
fn close_once(
    closer: Closer,
    n: usize,
    farm_bin: &Path,
    drainctl: &Path,
    notes: &mut Vec<String>,
) -> Result<CloseRun> {
    let netns = Netns::new().context("creating a private network namespace (run as root)")?;
    tune_namespace()?;
    let mut farms = Farms::new(farm_bin.to_path_buf(), true);
    farms.grow_to(PORT, n)?;
    std::thread::sleep(SETTLE);
    let seen = count_established(PORT)?;
    ensure!(
        seen == n,
        "ss counts {seen} connections on :{PORT}, the farms hold {n}"
    );

    let started_ns = monotonic_ns();
    let run = run_child(&mut closer.command(drainctl), true, CLOSE_TIMEOUT)?;
    if !run.status.success() {
        bail!("{}: {}", run.status, run.stderr_line());
    }
    if let Closer::Drain(_) = closer {
        let json: serde_json::Value = serde_json::from_slice(&run.stdout)
            .context("drainctl drain --json printed no JSON object")?;
        let graceful = json["closed_gracefully"].as_u64();
        if graceful != Some(n as u64) {
            notes.push(format!(
                "MISMATCH {} on {n}: closed_gracefully {graceful:?}, expected {n} (outcome {})",
                closer.label(),
                json["outcome"]
            ));
        }
        // The refusal is pinned until the listeners close; the namespace goes anyway.
        let _ = run_child(
            Command::new(drainctl).args(["release", "--port", &PORT.to_string()]),
            false,
            Duration::from_secs(10),
        );
    }
    let (closes, resets, stop_notes) = farms.collect_closes(ALL_CLOSED_TIMEOUT)?;
    notes.extend(stop_notes);
    drop(netns);
    if closes.len() != n {
        notes.push(format!(
            "MISMATCH {} on {n}: the farms saw {} client sides close",
            closer.label(),
            closes.len()
        ));
    }
    let last_close = closes
        .last()
        .map(|last| Duration::from_nanos(last.saturating_sub(started_ns)));
    Ok(CloseRun {
        wall: run.wall,
        cpu: run.cpu,
        max_rss_kib: run.max_rss_kib,
        closes,
        resets,
        last_close,
    })
}

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Closes per [`SLICE_NS`] slice from the first close to the last.
struct Slices {
    peak: usize,
    mean: f64,
    span: Duration,
}

fn slices(sorted: &[u64]) -> Option<Slices> {
    let (first, last) = (*sorted.first()?, *sorted.last()?);
    let count = usize::try_from((last - first) / SLICE_NS).ok()? + 1;
    let mut per_slice = vec![0usize; count];
    for t in sorted {
        if let Some(slot) = usize::try_from((t - first) / SLICE_NS)
            .ok()
            .and_then(|i| per_slice.get_mut(i))
        {
            *slot += 1;
        }
    }
    Some(Slices {
        peak: per_slice.iter().copied().max().unwrap_or(0),
        mean: sorted.len() as f64 / count as f64,
        span: Duration::from_nanos(last - first),
    })
}

fn render(
    machine: &Machine,
    table: &[(usize, Vec<CloseRun>, Vec<CloseRun>)],
    spreads: &[(Closer, CloseRun)],
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Closing idle connections: `drainctl drain` against `ss -K`\n"
    );
    let _ = writeln!(out, "{}", machine.header());
    let _ = writeln!(
        out,
        "Idle connections on :{PORT} (loopback, private netns), fresh farms each run, median of \
         {RUNS} runs. drainctl: `drain --standalone --spread 0s --quiet-period 0s --timeout \
         120s --json` (graceful: shutdown(SHUT_RD) through pidfd_getfd, the farm's server \
         closes on EOF); ss -K: `ss -K state established '( sport = :{PORT} )'` (SOCK_DESTROY). \
         Wall: spawn to exit; CPU: user + sys of the tool itself (wait4); last close: the \
         last client side to see EOF/RST, after the tool was spawned. Ratios: to ss -K.\n"
    );
    let _ = writeln!(
        out,
        "| connections | closer | wall ms | CPU ms | max RSS MiB | wall / ss -K | CPU / ss -K | peer EOF / resets | last close ms |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (n, drains, kills) in table {
        let stats = |runs: &[CloseRun]| {
            let walls: Vec<Duration> = runs.iter().map(|r| r.wall).collect();
            let cpus: Vec<Duration> = runs.iter().map(|r| r.cpu).collect();
            let lasts: Vec<Duration> = runs.iter().filter_map(|r| r.last_close).collect();
            (median(&walls), median(&cpus), median(&lasts))
        };
        let (ss_wall, ss_cpu, _) = stats(kills);
        for (label, runs) in [("drainctl drain (graceful)", drains), ("ss -K", kills)] {
            let (wall, cpu, last) = stats(runs);
            let (Some(wall), Some(cpu)) = (wall, cpu) else {
                let _ = writeln!(out, "| {n} | {label} | — | — | — | — | — | — | — |");
                continue;
            };
            let last = last.map_or("—".to_string(), |d| format!("{:.0}", ms(d)));
            let ratio = |a: Duration, b: Option<Duration>| {
                b.filter(|b| !b.is_zero()).map_or("—".to_string(), |b| {
                    format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
                })
            };
            let rss = runs.iter().map(|r| r.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
            let (closes, resets): (usize, usize) = runs
                .iter()
                .fold((0, 0), |(c, r), run| (c + run.closes.len(), r + run.resets));
            let _ = writeln!(
                out,
                "| {n} | {label} | {:.1} | {:.1} | {rss:.1} | {} | {} | {} / {resets} | {last} |",
                ms(wall),
                ms(cpu),
                ratio(wall, ss_wall),
                ratio(cpu, ss_cpu),
                closes - resets,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n(peer EOF / resets: summed over the {RUNS} runs.)\n\n## Spread smoothness: {SPREAD_CONNECTIONS} idle connections, peer-side closes per 100 ms\n"
    );
    let _ = writeln!(
        out,
        "| drain | closes | first → last ms | peak / slice | mean / slice | peak / mean | resets |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (closer, run) in spreads {
        match slices(&run.closes) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {:.1} | {:.2} | {} |",
                    closer.label(),
                    run.closes.len(),
                    ms(s.span),
                    s.peak,
                    s.mean,
                    s.peak as f64 / s.mean,
                    run.resets
                );
            }
            None => {
                let _ = writeln!(out, "| {} | 0 | — | — | — | — | — |", closer.label());
            }
        }
    }
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
    fn slices_count_peak_and_mean() {
        assert!(slices(&[]).is_none());
        let ms = |m: u64| m * 1_000_000;
        // 0-99 ms: 3 closes, 100-199: none, 200-299: 1 -> 3 slices, mean 4/3.
        let s = slices(&[ms(0), ms(10), ms(99), ms(250)]).unwrap();
        assert_eq!(s.peak, 3);
        assert!((s.mean - 4.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.span, Duration::from_millis(250));
    }
}

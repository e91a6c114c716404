//! Project automation, run as `cargo xtask <command>` (an alias in .cargo/config.toml).
//!
//! `setup` prepares a fresh machine, `demo` sets up and shows a drain end to end in a
//! private network namespace, `test` sets up and runs every test, including
//! `fresh-toolchain` (the eBPF toolchain pin proven in a scratch toolchain home). These
//! are the README's commands, and `.ci/run` runs `cargo xtask test`. `package` builds
//! the .deb (`package.rs`). `bench` sets up, builds optimised and runs the
//! connection-inventory, closing and busy-server benchmarks (see `bench.rs`,
//! `bench_close.rs`, `bench_busy.rs`).

mod bench;
mod bench_busy;
mod bench_close;
mod demo;
mod fresh_toolchain;
mod package;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and the tests need (idempotent).
    Setup,
    /// Setup, build, then drain a demo server in a private network namespace.
    Demo,
    /// Setup, build, then run every test (as root: the privileged tests need it) and the
    /// fresh-toolchain check.
    Test {
        /// Leave out the fresh-toolchain check (a few minutes) in a local run; refused
        /// under CI=true.
        #[arg(long)]
        skip_fresh_toolchain: bool,
    },
    /// Setup, then build the Debian package (cargo-deb) into target/package/ and check it
    /// with lintian.
    Package,
    /// Build the eBPF program with a toolchain installed from nothing by `setup`, in a
    /// scratch RUSTUP_HOME/CARGO_HOME (downloads the pinned nightly, builds bpf-linker).
    FreshToolchain,
    /// Setup (with the busy part's servers), release build, then the connection-inventory,
    /// closing and busy-server benchmarks (as root, about 20 minutes); writes
    /// target/bench/inventory.md, closing.md and busy.md.
    Bench {
        /// Timed runs per tool and scenario (median and min are reported).
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Skip setup and the release build (the binaries are already built).
        #[arg(long)]
        no_build: bool,
        /// Run only one part of the benchmark.
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
        #[command(flatten)]
        busy: bench_busy::Options,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Setup => setup::setup(),
        Task::Demo => setup::setup()
            .and_then(|()| build())
            .and_then(|()| demo::run()),
        Task::Test {
            skip_fresh_toolchain,
        } => setup::setup()
            .and_then(|()| build())
            .and_then(|()| test(skip_fresh_toolchain)),
        Task::Package => setup::setup().and_then(|()| package::package().map(drop)),
        Task::FreshToolchain => fresh_toolchain::run_check(&workspace()),
        Task::Bench {
            runs,
            no_build: true,
            only,
            busy,
        } => bench::run(runs, &busy, only),
        Task::Bench {
            runs,
            no_build: false,
            only,
            busy,
        } => setup::setup()
            .and_then(|()| match only {
                None | Some(bench::Part::Busy) => setup::bench_packages(),
                Some(_) => Ok(()),
            })
            .and_then(|()| build_release())
            .and_then(|()| bench::run(runs, &busy, only)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds every binary the tests and the demo run (drainctl, drain-demo-server).
fn build() -> Result<()> {
    run(Command::new(cargo()).args(["build", "--workspace", "--bins"]))
}

/// Builds the binaries the benchmark runs (drainctl, drain-bench-farm), optimised.
fn build_release() -> Result<()> {
    run(Command::new(cargo()).args(["build", "--release", "--workspace", "--bins"]))
}

/// The fresh-toolchain check runs first (its output would otherwise bury the test
/// summary) but does not stop the tests: both results are reported.
fn test(skip_fresh_toolchain: bool) -> Result<()> {
    let fresh = if skip_fresh_toolchain {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            bail!("--skip-fresh-toolchain is refused under CI=true: CI must prove the pin");
        }
        println!("fresh-toolchain: skipped (--skip-fresh-toolchain)");
        Ok(())
    } else {
        fresh_toolchain::run_check(&workspace())
    };
    let tests = run(Command::new(cargo()).args(["test", "--workspace", "--no-fail-fast"]));
    match (fresh, tests) {
        (Ok(()), tests) => tests,
        (Err(fresh), Ok(())) => Err(fresh.context("the fresh-toolchain check failed")),
        (Err(fresh), Err(tests)) => {
            Err(tests.context(format!("and the fresh-toolchain check failed: {fresh:#}")))
        }
    }
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Runs a command with inherited output; fails unless it exits 0.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails unless it exits 0.
pub(crate) fn output_of(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

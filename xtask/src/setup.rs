//! `cargo xtask setup`: installs what a fresh machine lacks to build and test the project.
//!
//! The eBPF program needs nightly with `rust-src` (for `-Z build-std=core`) and
//! bpf-linker built against LLVM 22 (rustc's LLVM); the tests and the demo need iproute2,
//! curl and a keep-alive load generator. Each step checks first and does nothing when its
//! part is there, so a second run takes about a second.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{output_of, run};

/// Debian packages: LLVM 22 for bpf-linker, iproute2 (`ip`, `ss`) for namespaces and
/// comparisons, curl and hey as real clients.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "curl",
    "hey",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn setup() -> Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    println!("setup: everything is in place");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_installed(package: &str) -> bool {
    output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

fn nightly_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        return Ok(());
    }
    println!("setup: installing nightly with rust-src (for the eBPF build)");
    run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let version = output_of(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    // bpf-linker's build script finds LLVM through LLVM_PREFIX; llvm-sys through its own
    // variable. Without them the link fails with "unable to find library -lLLVM".
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
    let version = output_of(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker is not on PATH after installing it (is ~/.cargo/bin on PATH?)")?;
    if !version.contains(BPF_LINKER_VERSION) {
        bail!("bpf-linker reports {version:?} after installing {BPF_LINKER_VERSION}");
    }
    Ok(())
}

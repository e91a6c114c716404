//! `cargo xtask package`: the Debian package (cargo-deb) with both binaries, the systemd
//! units, man pages and shell completions, checked by lintian.
//!
//! The man pages and completions are generated here, at package time, from the clap
//! definitions the binaries parse with (drain-daemon's `examples/package-docs.rs`), so
//! they cannot describe options the binaries lack. What goes where is declared once, in
//! drain-daemon/Cargo.toml's `[package.metadata.deb]`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, output_of, run, workspace};

/// Builds the .deb and returns its path. Lintian errors fail it; warnings are printed.
pub fn package() -> Result<PathBuf> {
    let root = workspace().canonicalize()?;
    let out = root.join("target/package");
    let docs = out.join("docs");
    let _ = std::fs::remove_dir_all(&docs);
    cargo_deb()?;
    run(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "drain-daemon",
        "--bins",
    ]))?;
    run(Command::new(cargo())
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "-p",
            "drain-daemon",
            "--example",
            "package-docs",
            "--",
        ])
        .arg(&docs))?;
    compress_man_pages(&docs.join("man"))?;
    let deb = output_of(
        Command::new(cargo())
            .current_dir(&root)
            .args(["deb", "-p", "drain-daemon", "--no-build", "--output"])
            .arg(&out),
    )?;
    // cargo-deb prints the package's path as its last line.
    let deb = PathBuf::from(deb.lines().last().unwrap_or_default().trim());
    if !deb.is_file() {
        bail!(
            "cargo deb did not report the package it built ({})",
            deb.display()
        );
    }
    lintian(&deb)?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Installs cargo-deb from crates.io when `cargo deb` is missing.
fn cargo_deb() -> Result<()> {
    if output_of(Command::new(cargo()).args(["deb", "--version"])).is_ok() {
        return Ok(());
    }
    println!("package: installing cargo-deb (a minute or two)");
    run(Command::new(cargo()).args(["install", "cargo-deb", "--locked"]))
}

/// Debian ships man pages compressed with `gzip -9n` (no name or time stamp, so the
/// package is reproducible); lintian checks both.
fn compress_man_pages(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext != "gz") {
            run(Command::new("gzip").args(["-9nf"]).arg(&path))?;
        }
    }
    Ok(())
}

/// Runs lintian: errors (`E:` lines) fail the package, warnings are shown.
fn lintian(deb: &Path) -> Result<()> {
    let output = Command::new("lintian")
        .arg(deb)
        .output()
        .context("cannot run lintian (cargo xtask setup installs it)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    print!("{report}");
    let errors: Vec<&str> = report
        .lines()
        .filter(|line| line.starts_with("E:"))
        .collect();
    if !errors.is_empty() {
        bail!(
            "lintian found {} error(s) in {}",
            errors.len(),
            deb.display()
        );
    }
    if !output.status.success() && report.trim().is_empty() {
        bail!(
            "lintian failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("package: lintian reports no error");
    Ok(())
}

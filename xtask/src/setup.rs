//! `cargo xtask setup`: installs what a fresh machine lacks to build and test the project.
//!
//! The eBPF program needs the pinned nightly with `rust-src` (for `-Z build-std=core`)
//! and bpf-linker built against that nightly's LLVM; both are named in
//! drain-ebpf/toolchain, and installed exactly as named whatever else the machine has.
//! The tests and the demo need iproute2, curl and a keep-alive load generator, and
//! tests/integrity.rs its real servers (nginx, Go, Python `websockets`, Redis), and
//! tests/refusal.rs haproxy. Each step checks first and does nothing when its part is
//! there, so a second run takes about a second. apache2 and Node.js, which only the
//! busy-server benchmark runs, are installed by `cargo xtask bench` only
//! ([`bench_packages`]), so that CI, which runs `setup`, stays lean.

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use drain_ebpf_toolchain::{self as toolchain, BPF_LINKER_VERSION, LLVM_MAJOR, NIGHTLY};

use crate::{output_of, run};

/// Debian packages besides LLVM: iproute2 (`ip`, `ss`) for namespaces and comparisons,
/// curl and hey as real clients, nginx as a real proxy (tests/busy.rs) and static
/// server (tests/integrity.rs), strace to inject system call failures
/// (tests/closing.rs, tests/systemd.rs), Go for the Go net/http server and Redis as a
/// binary protocol's server (tests/integrity.rs), haproxy as a load balancer
/// (tests/refusal.rs). The tests and the benchmark run their own nginx, haproxy and
/// Redis, in a private netns: the services Debian starts and
/// enables with the packages are stopped and disabled ([`HOST_SERVICES`]).
const APT_PACKAGES: &[&str] = &[
    "libzstd-dev",
    "iproute2",
    "curl",
    "hey",
    "nginx",
    "systemd",
    "lintian",
    "strace",
    "python3-venv",
    "golang-go",
    "redis-server",
    "haproxy",
];

pub fn setup() -> Result<()> {
    apt_packages()?;
    python_websockets()?;
    pinned_nightly()?;
    bpf_linker()?;
    kubernetes_validate()?;
    let installed = toolchain::check()?;
    println!(
        "setup: everything is in place (eBPF: {NIGHTLY} with LLVM {}, {} for LLVM {})",
        installed.rustc_llvm,
        installed.linker.display(),
        installed.linker_llvm_major
    );
    Ok(())
}

/// LLVM for bpf-linker to build against, with the major the pin names.
fn llvm_packages() -> [String; 2] {
    [
        format!("llvm-{LLVM_MAJOR}-dev"),
        format!("libpolly-{LLVM_MAJOR}-dev"),
    ]
}

/// Debian packages of the busy-server benchmark besides setup's (nginx, Go, haproxy): the
/// servers it runs behind haproxy, apache2 and Node.js. The benchmark runs its own, in a
/// private netns ([`HOST_SERVICES`]).
const BENCH_APT_PACKAGES: &[&str] = &["apache2", "nodejs"];

/// Packages whose installation starts and enables a host service of the same name
/// (Debian's policy): when setup installed one, it stops and disables that service, so
/// that `cargo xtask test` leaves no web server, proxy or Redis listening on the host's
/// ports (80, 443, 6379). A package that was there before setup ran is left as it was.
const HOST_SERVICES: &[&str] = &["nginx", "haproxy", "redis-server", "apache2"];

/// What `cargo xtask bench` needs beyond `setup`: [`BENCH_APT_PACKAGES`].
pub fn bench_packages() -> Result<()> {
    apt_install(BENCH_APT_PACKAGES.iter().copied())
}

/// The Python `websockets` package for the websocket servers of the tests and the
/// benchmark (pip, or Debian's python3-websockets where pip may not install).
fn python_websockets() -> Result<()> {
    let has_websockets = || {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if has_websockets() {
        return Ok(());
    }
    println!("setup: installing the python websockets package");
    if run(Command::new("python3").args(["-m", "pip", "install", "-q", "websockets"])).is_err() {
        apt_install(["python3-websockets"].into_iter())?;
    }
    if !has_websockets() {
        bail!("python3 cannot import websockets after installing it");
    }
    Ok(())
}

fn apt_packages() -> Result<()> {
    let llvm = llvm_packages();
    apt_install(
        llvm.iter()
            .map(String::as_str)
            .chain(APT_PACKAGES.iter().copied()),
    )
}

/// Installs those of `packages` that dpkg does not list as installed, then stops and
/// disables the [`HOST_SERVICES`] that came with them.
fn apt_install<'a>(packages: impl Iterator<Item = &'a str>) -> Result<()> {
    let missing: Vec<&str> = packages
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
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for service in missing.iter().filter(|p| HOST_SERVICES.contains(p)) {
        stop_host_service(service);
    }
    Ok(())
}

/// Stops and disables `service` on the host: through systemd where it runs the host,
/// else through the SysV scripts (`invoke-rc.d` honours a container's `policy-rc.d`,
/// which may have kept it from starting at all). Failures are reported, not fatal: the
/// tests do not need the service gone, the host's owner wants it.
fn stop_host_service(service: &str) {
    let disabled = if std::path::Path::new("/run/systemd/system").is_dir() {
        output_of(Command::new("systemctl").args(["disable", "--now", service]))
    } else {
        // Refused where policy-rc.d kept the service from starting: nothing to stop.
        let _ = output_of(Command::new("invoke-rc.d").args([service, "stop"]));
        output_of(Command::new("update-rc.d").args([service, "disable"]))
    };
    match disabled {
        Ok(_) => println!(
            "setup: stopped and disabled the host's {service} service (the tests run their own)"
        ),
        Err(err) => println!(
            "setup: {err}: the {service} service Debian enabled may still run on this host"
        ),
    }
}

fn dpkg_installed(package: &str) -> bool {
    output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.contains("install ok installed"))
}

/// Installs [`NIGHTLY`] with rust-src, by its dated name: the floating `nightly` is never
/// used, so whatever other nightlies the machine has do not matter.
fn pinned_nightly() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: installing {NIGHTLY} with rust-src (for the eBPF build)");
        // --no-self-update: installing a toolchain must not replace the user's rustup.
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
            "--no-self-update",
        ]))?;
    }
    let llvm = toolchain::rustc_llvm_version(NIGHTLY)?;
    if toolchain::llvm_major(&llvm) != Some(LLVM_MAJOR) {
        bail!(toolchain::ToolchainError::PinInconsistent {
            rustc: toolchain::llvm_major(&llvm).unwrap_or_default()
        });
    }
    Ok(())
}

/// Builds bpf-linker [`BPF_LINKER_VERSION`] against Debian's LLVM [`LLVM_MAJOR`], unless
/// the one in PATH is that version linked against that LLVM (`cargo install bpf-linker`
/// alone picks the newest LLVM feature, which the pinned nightly's bitcode does not match).
fn bpf_linker() -> Result<()> {
    if linker_matches_pin() {
        return Ok(());
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)"
    );
    let prefix = toolchain::llvm_prefix();
    // bpf-linker's build script finds LLVM through LLVM_PREFIX; llvm-sys through its own
    // variable, named after its version (221 for LLVM 22.1). Without them the link fails
    // with "unable to find library -lLLVM".
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .env("LLVM_PREFIX", &prefix)
        .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &prefix))?;
    if !linker_matches_pin() {
        let found = toolchain::find_in_path("bpf-linker")
            .context("bpf-linker is not on PATH after installing it (is ~/.cargo/bin on PATH?)")?;
        bail!(
            "{} is not bpf-linker {BPF_LINKER_VERSION} for LLVM {LLVM_MAJOR} after installing it: \
             another bpf-linker comes first in PATH",
            found.display()
        );
    }
    Ok(())
}

fn linker_matches_pin() -> bool {
    let Some(linker) = toolchain::find_in_path("bpf-linker") else {
        return false;
    };
    let version = output_of(Command::new(&linker).arg("--version")).unwrap_or_default();
    version
        .split_whitespace()
        .any(|word| word == BPF_LINKER_VERSION)
        && toolchain::linked_llvm_major(&linker).ok() == Some(LLVM_MAJOR)
}

/// The kubernetes-validate release the manifest tests use: it carries the Kubernetes
/// schemas, so it validates offline (kubectl's client-side validation downloads them
/// from an API server, which a test machine does not have).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Installs [`KUBERNETES_VALIDATE`] into a venv of its own under
/// `~/.cache/drain-daemon/kubernetes-validate` (tests/kubernetes.rs looks there), unless
/// it is there already.
fn kubernetes_validate() -> Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = std::path::Path::new(&home).join(".cache/drain-daemon/kubernetes-validate");
    let installed = output_of(Command::new(venv.join("bin/kubernetes-validate")).arg("--version"))
        .is_ok_and(|version| {
            let version = version.trim();
            !version.is_empty() && KUBERNETES_VALIDATE.ends_with(version)
        });
    if installed {
        return Ok(());
    }
    println!(
        "setup: installing {KUBERNETES_VALIDATE} into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "-q", KUBERNETES_VALIDATE]))
}

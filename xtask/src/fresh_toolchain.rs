//! `cargo xtask fresh-toolchain`: proves the eBPF toolchain pin as a new machine sees it.
//!
//! A green run on a machine that already holds toolchains can hide a pin that no longer
//! installs or a bpf-linker that no longer builds: a machine that still had an older
//! nightly passed CI while fresh machines failed with `ERROR llvm: Invalid record`. This
//! check runs `cargo xtask setup` and then builds drain-daemon (hence the eBPF program)
//! in a scratch `RUSTUP_HOME` and `CARGO_HOME` under `target/fresh-toolchain/`, with the
//! machine's `~/.cargo/bin` out of `PATH`: the pinned nightly is downloaded, bpf-linker
//! is built from crates.io, and every crate is fetched anew.
//!
//! What it cannot prove: the Debian packages (LLVM among them) are the machine's own, and
//! the stable toolchain that drives cargo is the machine's, linked into the scratch
//! `RUSTUP_HOME` (the project builds with the stable a fresh machine ships).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use drain_ebpf_toolchain::{self as toolchain, LLVM_MAJOR, NIGHTLY};

use crate::{output_of, run};

/// ELF `e_machine` of a BPF object.
const EM_BPF: u16 = 247;
/// What the scratch `RUSTUP_HOME` calls the machine's stable toolchain.
const HOST_TOOLCHAIN: &str = "machine-stable";

pub fn run_check(workspace: &Path) -> Result<()> {
    let started = Instant::now();
    let workspace = &fs::canonicalize(workspace).unwrap_or_else(|_| workspace.to_path_buf());
    let scratch = Scratch::create(&workspace.join("target/fresh-toolchain"))?;
    println!(
        "fresh-toolchain: empty RUSTUP_HOME and CARGO_HOME in {}",
        scratch.root.display()
    );
    scratch.link_machine_stable()?;
    run(scratch
        .command("cargo")
        .args(["run", "--quiet", "--package", "xtask", "--", "setup"])
        .current_dir(workspace))
    .context("`cargo xtask setup` failed in a scratch RUSTUP_HOME/CARGO_HOME")?;
    run(scratch
        .command("cargo")
        .args(["check", "--quiet", "--package", "drain-daemon"])
        .current_dir(workspace))
    .context("building drain-daemon (and its eBPF program) with a fresh toolchain failed")?;

    let linker = scratch.cargo_home().join("bin/bpf-linker");
    let linker_llvm = toolchain::linked_llvm_major(&linker)?;
    ensure!(
        linker_llvm == LLVM_MAJOR,
        "the fresh bpf-linker is built against LLVM {linker_llvm}, the pin says {LLVM_MAJOR}"
    );
    let object = scratch.ebpf_object()?;
    let size = fs::metadata(&object)?.len();
    println!(
        "fresh-toolchain: ok in {:.0?}: {NIGHTLY} downloaded, bpf-linker built for LLVM \
         {linker_llvm}, eBPF object {} ({size} bytes, EM_BPF)",
        started.elapsed(),
        object.display()
    );
    fs::remove_dir_all(&scratch.root)
        .with_context(|| format!("removing {}", scratch.root.display()))
}

struct Scratch {
    root: PathBuf,
    /// The machine's rustup binary: with `RUSTUP_HOME` pointing at the scratch, it
    /// installs and runs toolchains there only.
    rustup: PathBuf,
}

impl Scratch {
    fn create(root: &Path) -> Result<Self> {
        let rustup = toolchain::find_in_path("rustup").context("rustup not found in PATH")?;
        let rustup = fs::canonicalize(&rustup).unwrap_or(rustup);
        if root.exists() {
            fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
        }
        let scratch = Self {
            root: root.to_path_buf(),
            rustup,
        };
        fs::create_dir_all(scratch.cargo_home().join("bin"))?;
        fs::create_dir_all(scratch.rustup_home())?;
        // rustup's proxies are the rustup binary under another name.
        for proxy in ["rustup", "cargo", "rustc"] {
            std::os::unix::fs::symlink(
                &scratch.rustup,
                scratch.cargo_home().join("bin").join(proxy),
            )
            .with_context(|| format!("linking the {proxy} proxy"))?;
        }
        Ok(scratch)
    }

    fn rustup_home(&self) -> PathBuf {
        self.root.join("rustup")
    }

    fn cargo_home(&self) -> PathBuf {
        self.root.join("cargo")
    }

    /// A command that sees only the scratch toolchains: cargo's own variables (set for
    /// `cargo xtask`) and the machine's `~/.cargo/bin` are left out.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.cargo_home().join("bin").join(program));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO") || key.starts_with("RUSTUP") || key.starts_with("RUST") {
                command.env_remove(&*key);
            }
        }
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.cargo_home().join("bin").display()
        );
        command
            .env("PATH", path)
            .env("RUSTUP_HOME", self.rustup_home())
            .env("CARGO_HOME", self.cargo_home())
            .env("CARGO_TARGET_DIR", self.root.join("target"))
            // The pin must be installed by setup, not by rustup on first use.
            .env("RUSTUP_AUTO_INSTALL", "0");
        command
    }

    /// Makes the machine's stable toolchain the scratch default, without a download.
    fn link_machine_stable(&self) -> Result<()> {
        let sysroot = output_of(Command::new("rustc").args(["--print", "sysroot"]))?;
        run(self
            .command("rustup")
            .args(["toolchain", "link", HOST_TOOLCHAIN, sysroot.trim()]))?;
        run(self.command("rustup").args(["default", HOST_TOOLCHAIN]))
    }

    /// The program drain-daemon's build script built, checked to be a BPF ELF object.
    fn ebpf_object(&self) -> Result<PathBuf> {
        let build = self.root.join("target/debug/build");
        for entry in fs::read_dir(&build).with_context(|| format!("reading {}", build.display()))? {
            let object = entry?.path().join("out/drain-ebpf");
            if let Ok(bytes) = fs::read(&object) {
                ensure!(
                    bytes.starts_with(b"\x7fELF")
                        && bytes.get(18..20) == Some(&EM_BPF.to_le_bytes()[..]),
                    "{} is not a BPF ELF object",
                    object.display()
                );
                return Ok(object);
            }
        }
        bail!("no eBPF object under {}", build.display())
    }
}

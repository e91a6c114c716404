//! The toolchain that builds the eBPF program, named in one place.
//!
//! The eBPF program is compiled by a nightly rustc (for `-Z build-std=core`) and linked by
//! bpf-linker, which reads rustc's LLVM bitcode with its own LLVM. Both LLVMs must have
//! the same major version: an older LLVM cannot read a newer one's bitcode, and the link
//! fails with nothing more than `ERROR llvm: Invalid record`. The floating `nightly` moves
//! to a new LLVM every few months, so the nightly is pinned by date here, next to the LLVM
//! major bpf-linker is built against. drain-daemon's build script and `cargo xtask setup`
//! read these constants; nothing else names a nightly.
//!
//! To move to a newer nightly or LLVM: change the constants below (a nightly whose
//! `rustc -vV` reports `LLVM version: N.x`, `LLVM_MAJOR = N`, and a bpf-linker release
//! with an `llvm-N` feature), then run `cargo xtask setup`. Debian must have
//! `llvm-N-dev` for bpf-linker to build against.
#![forbid(unsafe_code)]

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
};

/// The nightly that compiles drain-ebpf (rustc 1.97.0-nightly e50aa6fba, LLVM 22.1.4).
pub const NIGHTLY: &str = "nightly-2026-05-20";
/// The LLVM major version of [`NIGHTLY`]'s rustc, and the one bpf-linker is built against.
pub const LLVM_MAJOR: u32 = 22;
/// The bpf-linker release, built from crates.io with its `llvm-<LLVM_MAJOR>` feature.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// What `cargo xtask setup` runs to install everything named here.
pub const FIX: &str = "cargo xtask setup";

/// Where Debian's `llvm-<LLVM_MAJOR>-dev` installs LLVM (bpf-linker builds against it).
pub fn llvm_prefix() -> PathBuf {
    PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"))
}

/// Why the installed eBPF toolchain cannot build the program. Each message is one line
/// that names the versions that disagree and the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error("the eBPF toolchain {NIGHTLY} is not installed (`rustup run {NIGHTLY} rustc -vV` failed: {detail}): run `{FIX}`")]
    NightlyMissing { detail: String },
    #[error("cannot read the LLVM version from `rustup run {toolchain} rustc -vV`: {detail}")]
    RustcLlvmUnknown { toolchain: String, detail: String },
    #[error("the pin in drain-ebpf/toolchain is inconsistent: {NIGHTLY} uses LLVM {rustc} but LLVM_MAJOR is {LLVM_MAJOR}: set LLVM_MAJOR (and a matching BPF_LINKER_VERSION), then run `{FIX}`")]
    PinInconsistent { rustc: u32 },
    #[error("bpf-linker not found in PATH: run `{FIX}` (it builds bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR})")]
    LinkerMissing,
    #[error("cannot tell which LLVM {path} uses (`ldd` names no libLLVM: {detail}): run `{FIX}` to build bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}", path = path.display())]
    LinkerLlvmUnknown { path: PathBuf, detail: String },
    #[error("LLVM mismatch: rustc {toolchain} uses LLVM {rustc} but {path} is built against LLVM {linker} (the eBPF build needs one LLVM for both): run `{FIX}`", path = path.display())]
    LlvmMismatch {
        toolchain: String,
        rustc: u32,
        path: PathBuf,
        linker: u32,
    },
}

/// The toolchain found on this machine, checked against the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The full `LLVM version:` of the pinned nightly's rustc, e.g. `22.1.4`.
    pub rustc_llvm: String,
    /// The bpf-linker found in `PATH`.
    pub linker: PathBuf,
    /// The LLVM major it is linked against.
    pub linker_llvm_major: u32,
}

/// Checks that [`NIGHTLY`] is installed, uses LLVM [`LLVM_MAJOR`], and that the
/// bpf-linker in `PATH` is built against the same LLVM major.
pub fn check() -> Result<Installed, ToolchainError> {
    let rustc_llvm = rustc_llvm_version(NIGHTLY)?;
    let rustc = llvm_major(&rustc_llvm).ok_or_else(|| ToolchainError::RustcLlvmUnknown {
        toolchain: NIGHTLY.to_string(),
        detail: format!("LLVM version {rustc_llvm:?}"),
    })?;
    if rustc != LLVM_MAJOR {
        return Err(ToolchainError::PinInconsistent { rustc });
    }
    let linker = find_in_path("bpf-linker").ok_or(ToolchainError::LinkerMissing)?;
    let linker_llvm_major = linked_llvm_major(&linker)?;
    check_llvm_pair(NIGHTLY, rustc, &linker, linker_llvm_major)?;
    Ok(Installed {
        rustc_llvm,
        linker,
        linker_llvm_major,
    })
}

/// The LLVM version of `rustup run <toolchain> rustc -vV`, e.g. `22.1.4`.
pub fn rustc_llvm_version(toolchain: &str) -> Result<String, ToolchainError> {
    let output = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            let detail = first_line(&String::from_utf8_lossy(&output.stderr))
                .unwrap_or_else(|| output.status.to_string());
            return Err(missing_or_unknown(toolchain, detail));
        }
        Err(err) => return Err(missing_or_unknown(toolchain, format!("rustup: {err}"))),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_rustc_llvm_version(&stdout)
        .map(str::to_string)
        .ok_or_else(|| ToolchainError::RustcLlvmUnknown {
            toolchain: toolchain.to_string(),
            detail: "no `LLVM version:` line".to_string(),
        })
}

fn missing_or_unknown(toolchain: &str, detail: String) -> ToolchainError {
    if toolchain == NIGHTLY {
        ToolchainError::NightlyMissing { detail }
    } else {
        ToolchainError::RustcLlvmUnknown {
            toolchain: toolchain.to_string(),
            detail,
        }
    }
}

/// The LLVM major version the dynamically linked `binary` loads (from `ldd`).
pub fn linked_llvm_major(binary: &Path) -> Result<u32, ToolchainError> {
    let unknown = |detail: String| ToolchainError::LinkerLlvmUnknown {
        path: binary.to_path_buf(),
        detail,
    };
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|err| unknown(format!("ldd: {err}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_ldd_llvm_major(&stdout)
        .ok_or_else(|| unknown(first_line(&stdout).unwrap_or_else(|| "no output".to_string())))
}

/// Fails with [`ToolchainError::LlvmMismatch`] unless both majors are equal.
pub fn check_llvm_pair(
    toolchain: &str,
    rustc: u32,
    linker: &Path,
    linker_major: u32,
) -> Result<(), ToolchainError> {
    if rustc == linker_major {
        return Ok(());
    }
    Err(ToolchainError::LlvmMismatch {
        toolchain: toolchain.to_string(),
        rustc,
        path: linker.to_path_buf(),
        linker: linker_major,
    })
}

/// `LLVM version: 23.1.4` in `rustc -vV` output.
fn parse_rustc_llvm_version(verbose_version: &str) -> Option<&str> {
    verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .map(str::trim)
        .filter(|version| !version.is_empty())
}

/// The major of a version such as `22.1.4`.
pub fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}

/// `libLLVM.so.22.1 => ...` (Debian), or `libLLVM-22.so => ...` (older LLVM naming).
fn parse_ldd_llvm_major(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|line| {
        let name = line.split_whitespace().next()?;
        let version = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-")?.strip_suffix(".so"))?;
        llvm_major(version)
    })
}

/// The first executable named `program` in `PATH`.
pub fn find_in_path(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program.as_ref()))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rustc_llvm_version() {
        let vv = "rustc 1.101.0-nightly (92b5b8c87 2026-10-29)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.101.0-nightly\nLLVM version: 23.1.4\n";
        assert_eq!(parse_rustc_llvm_version(vv), Some("23.1.4"));
        assert_eq!(llvm_major("23.1.4"), Some(23));
        assert_eq!(parse_rustc_llvm_version("rustc 1.95.0\n"), None);
    }

    #[test]
    fn reads_linked_llvm_from_ldd() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f3e)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6\n";
        assert_eq!(parse_ldd_llvm_major(debian), Some(22));
        let older = "\tlibLLVM-17.so => /usr/lib/llvm-17/lib/libLLVM-17.so (0x1)\n";
        assert_eq!(parse_ldd_llvm_major(older), Some(17));
        assert_eq!(parse_ldd_llvm_major("\tstatically linked\n"), None);
    }

    #[test]
    fn mismatch_is_one_line_with_both_versions_and_the_fix() {
        let err = check_llvm_pair("nightly", 23, Path::new("/root/.cargo/bin/bpf-linker"), 22)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("LLVM 23") && err.contains("LLVM 22"), "{err}");
        assert!(err.contains(FIX), "{err}");
        assert!(check_llvm_pair(NIGHTLY, 22, Path::new("bpf-linker"), 22).is_ok());
    }

    /// The tools `cargo xtask setup` installed agree with the pin (setup runs before the
    /// tests in `cargo xtask test`); outside CI, a machine without them skips.
    #[test]
    fn installed_toolchain_matches_the_pin() {
        if find_in_path("bpf-linker").is_none() && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!("skipped: no bpf-linker in PATH (run `{FIX}`)");
            return;
        }
        let installed = check().unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(llvm_major(&installed.rustc_llvm), Some(LLVM_MAJOR));
        assert_eq!(installed.linker_llvm_major, LLVM_MAJOR);
    }

    #[test]
    fn the_pin_names_a_dated_nightly() {
        // The floating `nightly` moves to a new LLVM without notice (issue 7).
        let date = NIGHTLY.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), "2026-05-20".len(), "{NIGHTLY} has no date");
        assert!(
            date.split('-').all(|part| part.parse::<u32>().is_ok()),
            "{NIGHTLY}"
        );
    }
}

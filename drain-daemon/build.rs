//! Builds the sk_lookup program (drain-ebpf) for the BPF target with the pinned nightly
//! and bpf-linker, so the object can be embedded in the binaries with
//! `include_bytes_aligned!`.
//!
//! The toolchain is checked first (drain-ebpf/toolchain): a nightly whose LLVM differs
//! from bpf-linker's fails the link with a bare `ERROR llvm: Invalid record`, so a
//! mismatch is reported here as one line naming both versions and the fix instead.
use std::{path::Path, process::ExitCode};

use aya_build::{Package, Toolchain};
use drain_ebpf_toolchain as toolchain;

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // `cargo::error` shows the message as the build's error line.
            println!("cargo::error={message}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or("drain-daemon has no parent directory")?;
    // The program's maps and keys come from drain-common.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("drain-common").display()
    );
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        let installed = toolchain::check().map_err(|err| err.to_string())?;
        // A rebuilt bpf-linker (for another LLVM) must rebuild the program.
        println!("cargo:rerun-if-changed={}", installed.linker.display());
    }
    let ebpf_dir = workspace.join("drain-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [Package {
            name: "drain-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(toolchain::NIGHTLY),
    )
    .map_err(|err| {
        format!(
            "building the eBPF program with {} failed (the compiler's messages are above): {err:#}",
            toolchain::NIGHTLY
        )
    })
}

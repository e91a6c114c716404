//! Rebuilds the program when bpf-linker changes: it is the linker of the BPF target, and
//! a bpf-linker rebuilt for another LLVM must relink the program.
use std::process::ExitCode;

use drain_ebpf_toolchain::{find_in_path, ToolchainError};

fn main() -> ExitCode {
    println!("cargo:rerun-if-env-changed=PATH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return ExitCode::SUCCESS;
    }
    match find_in_path("bpf-linker") {
        Some(linker) => {
            println!("cargo:rerun-if-changed={}", linker.display());
            ExitCode::SUCCESS
        }
        None => {
            println!("cargo::error={}", ToolchainError::LinkerMissing);
            ExitCode::FAILURE
        }
    }
}

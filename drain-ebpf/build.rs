//! Rebuilds the program when bpf-linker changes (it is the linker of the bpf target).
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found in PATH: run `cargo xtask setup` (it installs bpf-linker 0.13 for LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

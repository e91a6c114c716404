//! Builds the sk_lookup program (drain-ebpf) for the BPF target with nightly and
//! bpf-linker, so the object can be embedded in the binaries with `include_bytes_aligned!`.
use std::path::Path;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .context("drain-daemon has no parent directory")?;
    let ebpf_dir = workspace.join("drain-ebpf");
    // The program's maps and keys come from drain-common.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("drain-common").display()
    );
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [Package {
            name: "drain-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF program failed; `cargo xtask setup` installs what it needs")
}

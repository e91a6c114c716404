//! Building the Go servers that the tests and the benchmark run: offline (standard
//! library only, no module proxy, the local toolchain), with Go's caches under a
//! directory of the caller's so that nothing is written to the home directory.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

/// `go build` of the package in `source` with `go`, its caches and the binary under
/// `dir`. Returns the binary.
pub fn build(go: &Path, source: &Path, dir: &Path) -> io::Result<PathBuf> {
    let bin = dir.join("go-server");
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(source)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("path"))
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "go build in {}: {status}",
            source.display()
        )));
    }
    Ok(bin)
}

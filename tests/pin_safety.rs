//! The files drainctl touches as root: the drain records. Each
//! test runs in its own network namespace and its own mount namespace (a private bpffs
//! and /run, see `PrivateMounts`), so planted symlinks and held locks never reach the
//! host's pin tree, and drains with the real eBPF program and real sockets.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::PathBuf,
    time::Duration,
};

use drain_tests::{spawn_drainctl_with, start_server, DrainctlOutput, Netns, PrivateMounts};

const SECOND: Duration = Duration::from_secs(1);

fn drain(mounts: &PrivateMounts, port: &str) -> DrainctlOutput {
    spawn_drainctl_with(&mut mounts.drainctl([
        "drain",
        "--standalone",
        "--port",
        port,
        "--timeout",
        "15s",
    ]))
    .wait(30 * SECOND)
}

/// A scratch directory outside the pin tree holding `files` (relative paths), as a
/// local user would point a planted symlink at.
fn scratch(name: &str, files: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drain-pin-safety-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    for file in files {
        let path = dir.join(file);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"not drain-daemon's").unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn drain_records_are_not_written_through_a_symlink() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let target = scratch("records", &[]);
    let mounts = PrivateMounts::new(true);
    let run = mounts.path("/run/drain-daemon");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&target, run.join("drains")).unwrap();

    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    let written: Vec<_> = fs::read_dir(&target).unwrap().collect();
    assert!(
        written.is_empty(),
        "written through the symlink: {written:?}"
    );
    assert!(
        output
            .stderr_text()
            .contains("not announcing the drain for drainctl status"),
        "{}",
        output.stderr_text()
    );
    fs::remove_dir_all(&target).unwrap();
}

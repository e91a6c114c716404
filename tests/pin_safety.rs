//! The files drainctl touches as root: the bpffs pin tree and the drain records. Each
//! test runs in its own network namespace and its own mount namespace (a private bpffs
//! and /run, see `PrivateMounts`), so planted symlinks and held locks never reach the
//! host's pin tree, and drains with the real eBPF program and real sockets.

use std::{
    fs,
    os::unix::fs::{symlink, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use drain_tests::{
    assert_refused_at_once, bin_path, busy_client, daemon_socket_path, drain_through_daemon,
    spawn_daemon_with, spawn_drainctl_with, start_server, DrainctlOutput, KeepAliveClient, Netns,
    PrivateMounts, SERVING,
};

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

fn assert_all_there(dir: &Path, files: &[&str]) {
    for file in files {
        assert!(
            dir.join(file).is_file(),
            "{} was deleted",
            dir.join(file).display()
        );
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

#[test]
fn drainctl_mounts_bpffs_and_makes_its_directories_for_root_only() {
    let Some(netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(false);
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_refused_at_once(addr);

    let options = mounts
        .mount_options("/sys/fs/bpf")
        .expect("drainctl mounted a bpffs");
    for wanted in ["nosuid", "nodev", "noexec", "mode=700"] {
        assert!(
            options.split([' ', ',']).any(|option| option == wanted),
            "bpffs mounted without {wanted}: {options}"
        );
    }
    let netns = netns.dir_name();
    for dir in [
        "/sys/fs/bpf".to_string(),
        "/sys/fs/bpf/drain-daemon".into(),
        format!("/sys/fs/bpf/drain-daemon/{netns}"),
        format!("/sys/fs/bpf/drain-daemon/{netns}/port-8080"),
        "/run/drain-daemon".into(),
        "/run/drain-daemon/drains".into(),
        format!("/run/drain-daemon/drains/{netns}"),
    ] {
        assert_eq!(mode(&mounts.path(&dir)), 0o700, "mode of {dir}");
    }
    let record = mounts.path(&format!("/run/drain-daemon/drains/{netns}/port-8080.json"));
    assert_eq!(mode(&record), 0o600, "the drain record");
}

#[test]
fn a_planted_pin_root_is_refused_and_what_it_points_to_is_left_alone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let files = ["netns-1/port-1/link", "a/b/c", "x/y"];
    let target = scratch("root", &files);
    let mounts = PrivateMounts::new(true);
    let pin_root = mounts.path("/sys/fs/bpf/drain-daemon");
    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);

    symlink(&target, &pin_root).unwrap();
    let output = drain(&mounts, "8080");
    assert_all_there(&target, &files);
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("/sys/fs/bpf/drain-daemon is a symbolic link or not a directory"),
        "{}",
        output.stderr_text()
    );
    KeepAliveClient::connect(addr).expect("no steering was set up");

    // A directory of another user's, or one others may write in: refused the same way.
    fs::remove_file(&pin_root).unwrap();
    fs::create_dir(&pin_root).unwrap();
    std::os::unix::fs::chown(&pin_root, Some(65534), None).unwrap();
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("is owned by uid 65534, not root"),
        "{}",
        output.stderr_text()
    );
    std::os::unix::fs::chown(&pin_root, Some(0), None).unwrap();
    fs::set_permissions(&pin_root, fs::Permissions::from_mode(0o777)).unwrap();
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(3), "log:\n{}", output.stderr_text());
    assert!(
        output
            .stderr_text()
            .contains("is writable by other users (mode 777)"),
        "{}",
        output.stderr_text()
    );
    KeepAliveClient::connect(addr).expect("no steering was set up");
    fs::remove_dir_all(&target).unwrap();
}

#[test]
fn the_sweep_follows_no_symlink_and_leaves_foreign_entries_alone() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let files = ["port-1/link", "port-2/listeners", "a/b"];
    let target = scratch("sweep", &files);
    let mounts = PrivateMounts::new(true);
    let pin_root = mounts.path("/sys/fs/bpf/drain-daemon");
    fs::create_dir(&pin_root).unwrap();
    fs::set_permissions(&pin_root, fs::Permissions::from_mode(0o700)).unwrap();
    // What the old sweep walked into: a namespace entry that is a symlink.
    symlink(&target, pin_root.join("netns-1")).unwrap();
    // And a namespace directory of another user's, with a port directory in it.
    fs::create_dir_all(pin_root.join("netns-2/port-1")).unwrap();
    std::os::unix::fs::chown(pin_root.join("netns-2"), Some(65534), None).unwrap();

    let (_server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert_refused_at_once(addr);
    assert_all_there(&target, &files);
    assert!(fs::symlink_metadata(pin_root.join("netns-1"))
        .unwrap()
        .is_symlink());
    assert!(pin_root.join("netns-2/port-1").is_dir());
    fs::remove_dir_all(&target).unwrap();
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

#[test]
fn a_second_drain_of_a_draining_port_is_refused_and_names_the_first() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let (_server, events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let mut busy = busy_client(addr, &events, "/sleep/4000");
    let first = spawn_drainctl_with(&mut mounts.drainctl([
        "drain",
        "--standalone",
        "--port",
        "8080",
        "--timeout",
        "30s",
    ]));
    first
        .log()
        .wait_for_line(10 * SECOND, |line| {
            line.contains("new connections are refused")
        })
        .expect("the first drain refuses new connections");

    let second = drain(&mounts, "8080");
    assert_eq!(second.code, Some(3), "log:\n{}", second.stderr_text());
    let expected = format!("port 8080 is already being drained by pid {}", first.pid());
    assert!(
        second.stderr_text().contains(&expected),
        "{}",
        second.stderr_text()
    );
    // Nor can it be released from under the running drain.
    let release =
        spawn_drainctl_with(&mut mounts.drainctl(["release", "--standalone", "--port", "8080"]))
            .wait(10 * SECOND);
    assert_eq!(release.code, Some(3), "log:\n{}", release.stderr_text());
    assert!(
        release.stderr_text().contains(&expected),
        "{}",
        release.stderr_text()
    );
    // The first drain's steering is intact, and it runs to its end.
    assert_refused_at_once(addr);
    assert_eq!(busy.read_response().expect("answered").status, 200);
    let first = first.wait(30 * SECOND);
    assert_eq!(first.code, Some(0), "log:\n{}", first.stderr_text());
    assert_refused_at_once(addr);
}

#[test]
fn a_sweep_leaves_a_locked_port_alone() {
    let Some(netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let (mut old, _events, _addr) = start_server(["--listen", "127.0.0.1:8081"]);
    let output = drain(&mounts, "8081");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    // Its listener closes: the pinned drain of 8081 is stale from now on.
    old.terminate(5 * SECOND).unwrap();
    let stale = mounts.path(&format!(
        "/sys/fs/bpf/drain-daemon/{}/port-8081",
        netns.dir_name()
    ));
    assert!(stale.join("link").exists());

    // Someone (a drain setting up, a release) holds the port's lock: not swept.
    let lock = nix::fcntl::Flock::lock(
        fs::File::open(&stale).unwrap(),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, errno)| errno)
    .unwrap();
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert!(stale.join("link").exists(), "swept while locked");

    drop(lock);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert!(
        !stale.exists(),
        "the stale pinned drain is swept once unlocked"
    );
}

/// Drains port 8080 in a new network namespace that is deleted afterwards (its server
/// stopped, the thread back where it was), leaving its record and pins. Returns the
/// namespace's directory name and inode.
fn drain_in_a_deleted_namespace(mounts: &PrivateMounts) -> (String, u64) {
    let inner = Netns::new().expect("a second network namespace");
    let (mut server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    server.terminate(5 * SECOND).unwrap();
    (inner.dir_name(), inner.inode())
}

#[test]
fn pins_of_a_deleted_namespace_are_swept_with_its_directory() {
    let Some(_netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let (deleted, _) = drain_in_a_deleted_namespace(&mounts);
    let deleted = mounts.path(&format!("/sys/fs/bpf/drain-daemon/{deleted}"));
    // The thread is back in the test's namespace; nothing holds the inner one any more.
    assert!(deleted.join("port-8080/link").exists());
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert!(!deleted.exists(), "{} was not swept", deleted.display());
}

/// Polls for up to 10 s until `path` is gone.
fn gone_within_10s(path: &Path) -> bool {
    (0..100).any(|_| {
        let gone = !path.exists();
        if !gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        gone
    })
}

/// A namespace that is deleted leaves its drain record and pins behind; the daemon
/// sweeps them when it starts and after each drain it runs, while a live namespace's
/// (its drained server still listening) stay.
#[test]
fn the_daemon_sweeps_the_records_and_pins_of_deleted_namespaces_and_keeps_live_ones() {
    let Some(live) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let records = mounts.path("/run/drain-daemon/drains");
    let pins = mounts.path("/sys/fs/bpf/drain-daemon");
    let deleted: Vec<String> = (0..3)
        .map(|_| drain_in_a_deleted_namespace(&mounts).0)
        .collect();
    let (_server, _events, _addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let output = drain(&mounts, "8080");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    for name in &deleted {
        assert!(
            records.join(name).join("port-8080.json").is_file(),
            "{name}"
        );
    }

    let socket = daemon_socket_path("sweep");
    let mut command = mounts.command(bin_path("drain-daemon"));
    command.arg("--socket").arg(&socket);
    let (_daemon, _log) = spawn_daemon_with(command, SERVING);
    for name in &deleted {
        assert!(
            !records.join(name).exists(),
            "{name}'s records survived the start's sweep"
        );
        assert!(
            !pins.join(name).exists(),
            "{name}'s pins survived the start's sweep"
        );
    }
    let live = live.dir_name();
    assert!(records.join(&live).join("port-8080.json").is_file());
    assert!(pins.join(&live).join("port-8080/link").exists());

    let (deleted, _) = drain_in_a_deleted_namespace(&mounts);
    assert!(records.join(&deleted).join("port-8080.json").is_file());
    let (_other, _events, _addr) = start_server(["--listen", "127.0.0.1:9090"]);
    let output = drain_through_daemon(
        socket.to_str().unwrap(),
        &["--port", "9090", "--timeout", "5s"],
    );
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert!(
        gone_within_10s(&records.join(&deleted)),
        "{deleted}'s records survived the sweep after a drain"
    );
    assert!(records.join(&live).join("port-8080.json").is_file());
    assert!(records.join(&live).join("port-9090.json").is_file());
}

/// The socket inode of the one socket `pid` holds (a demo server with no client yet
/// holds only its listener).
fn only_socket_inode(pid: u32) -> u64 {
    let sockets: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?.to_string();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(sockets.len(), 1, "sockets of {pid}: {sockets:?}");
    sockets[0]
}

/// Renames every entry of `dir` named for the namespace inode `from` (`netns-<from>` and
/// `netns-<from>-<anything>`) to the same name for the inode `to`: what the kernel's
/// reuse of `from`'s inode for `to` makes of them. Returns the new names.
fn rename_for_inode(dir: &Path, from: u64, to: u64) -> Vec<String> {
    let prefix = format!("netns-{from}");
    let mut renamed = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('-')) {
            continue;
        }
        let new = format!("netns-{to}{rest}");
        fs::rename(dir.join(&name), dir.join(&new)).unwrap();
        renamed.push(new);
    }
    assert!(
        !renamed.is_empty(),
        "nothing in {} for {prefix}",
        dir.display()
    );
    renamed
}

/// The kernel gives a deleted network namespace's inode to the next namespace it makes.
/// What a drain left of the deleted one (its pins, its record) must not be taken for the
/// new namespace's: no refusal, no drain in `status`, nothing for `release` to release,
/// and the next drain's sweep removes the pins. The reuse is played by renaming the
/// deleted namespace's directories to what they would be called had the current
/// namespace got its inode (a real reuse cannot be awaited: any namespace made on the
/// machine meanwhile takes the number). The record is also made to name the current
/// listener's socket inode, as if socket inodes had wrapped too: the namespace's identity
/// alone must tell the record is not about this namespace.
#[test]
fn a_deleted_namespaces_pins_and_records_are_not_taken_for_a_new_one_with_its_inode() {
    let Some(netns) = Netns::require() else {
        return;
    };
    let mounts = PrivateMounts::new(true);
    let (_, deleted_inode) = drain_in_a_deleted_namespace(&mounts);
    let pin_root = mounts.path("/sys/fs/bpf/drain-daemon");
    let records = mounts.path("/run/drain-daemon/drains");
    let planted_pins = rename_for_inode(&pin_root, deleted_inode, netns.inode());
    let planted_records = rename_for_inode(&records, deleted_inode, netns.inode());
    assert!(pin_root
        .join(&planted_pins[0])
        .join("port-8080/link")
        .exists());

    let (server, _events, addr) = start_server(["--listen", "127.0.0.1:8080"]);
    let record_path = records.join(&planted_records[0]).join("port-8080.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    record["listener_inodes"] = serde_json::json!([only_socket_inode(server.pid())]);
    fs::write(&record_path, record.to_string()).unwrap();

    let mut client = KeepAliveClient::connect(addr).expect("no stale steering applies");
    assert_eq!(client.request("GET", "/", b"").unwrap().status, 200);
    let status = spawn_drainctl_with(&mut mounts.drainctl(["status", "--port", "8080", "--json"]))
        .wait(10 * SECOND);
    assert_eq!(status.code, Some(0), "log:\n{}", status.stderr_text());
    let port = &status.json()["ports"][0];
    assert_eq!(port["refusing_new_connections"], false, "{port}");
    assert!(port["drain"].is_null(), "a dead namespace's drain: {port}");
    let release = spawn_drainctl_with(&mut mounts.drainctl([
        "release",
        "--standalone",
        "--port",
        "8080",
        "--json",
    ]))
    .wait(10 * SECOND);
    assert_eq!(release.code, Some(0), "log:\n{}", release.stderr_text());
    assert_eq!(release.json()["released"], false, "{}", release.json());

    // The next drain (here of another port) sweeps the dead namespace's pins.
    let (_other, _events, _addr) = start_server(["--listen", "127.0.0.1:9090"]);
    let output = drain(&mounts, "9090");
    assert_eq!(output.code, Some(0), "log:\n{}", output.stderr_text());
    assert!(
        !pin_root.join(&planted_pins[0]).exists(),
        "{} was not swept",
        planted_pins[0]
    );
    KeepAliveClient::connect(addr).expect("the current namespace's port 8080 still accepts");
}

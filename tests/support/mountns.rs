//! A private mount namespace with its own bpffs and `/run`, for tests that plant
//! symlinks in the pin tree, inspect its modes or hold its locks, without touching the
//! host's `/sys/fs/bpf/drain-daemon` and `/run/drain-daemon`, which other tests and
//! other drains use at the same time.
//!
//! A holder process (`unshare --mount --propagation private`) makes the namespace and
//! sleeps in it. Commands from [`PrivateMounts::command`] join it with `nsenter --mount`
//! (which execs in place, so the child's pid is the command's) and stay in the calling
//! thread's network namespace. The test itself reaches the namespace's files through
//! `/proc/<holder>/root`, which resolves inside it. Everything ends with the holder: its
//! bpffs, and the programs pinned there, go with the namespace.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{bin_path, ChildGuard};

/// A private mount namespace, alive while this guard lives.
pub struct PrivateMounts {
    holder: ChildGuard,
}

impl PrivateMounts {
    /// A namespace with a fresh bpffs (`mode=0700`) at /sys/fs/bpf when `with_bpffs`,
    /// none at all otherwise (drainctl then mounts its own), and an empty tmpfs at /run.
    /// Needs root.
    pub fn new(with_bpffs: bool) -> PrivateMounts {
        let bpffs = if with_bpffs {
            "mount -t bpf -o mode=0700 bpf /sys/fs/bpf"
        } else {
            "true"
        };
        let script = format!(
            "set -e
             while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf; done
             {bpffs}
             mount -t tmpfs -o mode=0755 tmpfs /run
             echo ready
             exec sleep infinity"
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unshare: {e}"));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout pipe");
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read from the mount namespace holder: {e}"));
        assert_eq!(line.trim(), "ready", "the mount namespace holder failed");
        PrivateMounts {
            holder: ChildGuard(child),
        }
    }

    /// `inside` (an absolute path in the namespace) as the test can reach it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.holder.pid(),
            inside.trim_start_matches('/')
        ))
    }

    /// `program ARGS` to be run in the namespace (and in the caller's network namespace).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid()))
            .arg("--")
            .arg(program);
        command
    }

    /// `drainctl ARGS` in the namespace, for [`crate::spawn_drainctl_with`].
    pub fn drainctl<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command(bin_path("drainctl"));
        command.args(args);
        command
    }

    /// The mount options (per-mount and superblock) of what is mounted at `mount_point`
    /// in the namespace, from its mountinfo.
    pub fn mount_options(&self, mount_point: &str) -> Option<String> {
        let info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.holder.pid())).ok()?;
        // Fields: id parent major:minor root mount-point options ... - type source super-options
        info.lines().rev().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(4) == Some(&mount_point)).then(|| {
                let super_options = fields.last().copied().unwrap_or_default();
                format!("{} {super_options}", fields[5])
            })
        })
    }
}

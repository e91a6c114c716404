//! A stand-in for a Kubernetes pod: a network namespace and a PID namespace of its own,
//! entered by processes with no capability (and, when asked, a non-root uid), the way
//! an application container's processes and its preStop hook run.
//!
//! [`Pod::enter`] moves the calling thread into a fresh network namespace (a [`Netns`]
//! guard, so the test's own clients connect from inside the pod) and starts the pod's
//! "pause" process, pid 1 of a new PID namespace with its own `/proc`
//! (`unshare --pid --fork --mount-proc --kill-child`). [`Pod::command`] runs a program in
//! it: `nsenter` into the pause process's PID and mount namespaces (the network
//! namespace is the thread's already), then `setpriv` to drop every capability from the
//! bounding, inheritable and ambient sets. Killing the pause process (when the guard is
//! dropped) makes the kernel kill every process of the pod.

use std::{ffi::OsStr, process::Command};

use crate::{bin_path, ChildGuard, Netns};

/// Who the pod's processes run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodUser {
    /// uid 0 with no capability (a container's root under `drop: [ALL]`).
    RootWithoutCapabilities,
    /// uid and gid 65534 (`nobody`), no capability (`runAsUser: 65534`).
    Nobody,
}

/// A pod: its network namespace is the calling thread's while the guard lives.
pub struct Pod {
    // Dropped first: the pod's processes die with their pid 1.
    container: Container,
    netns: Netns,
}

/// A container of a pod with a PID namespace of its own: its pid 1 and what runs in it.
pub struct Container {
    _pause: ChildGuard,
    pause_pid: i32,
}

impl Pod {
    /// Enters a new pod (network namespace on this thread, PID namespace for the
    /// processes started with [`Pod::command`]). Panics if it cannot (test contract).
    pub fn enter() -> Pod {
        let netns = Netns::new().expect("the pod's network namespace");
        Pod {
            container: Container::start(),
            netns,
        }
    }

    /// Another container of the pod: the pod's network namespace, a PID namespace of its
    /// own (as without `shareProcessNamespace`). Drop it before the pod.
    pub fn another_container(&self) -> Container {
        Container::start()
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// [`Container::wrapper`] of the pod's first container.
    pub fn wrapper(&self, user: PodUser, own_proc: bool) -> Vec<String> {
        self.container.wrapper(user, own_proc)
    }

    /// [`Container::command`] of the pod's first container.
    pub fn command(&self, user: PodUser, own_proc: bool, program: impl AsRef<OsStr>) -> Command {
        self.container.command(user, own_proc, program)
    }

    /// [`Container::drainctl`] of the pod's first container.
    pub fn drainctl(&self, user: PodUser) -> Command {
        self.container.drainctl(user)
    }
}

impl Container {
    /// The pause process of a new PID namespace, in the calling thread's network
    /// namespace (the pod's).
    fn start() -> Container {
        let pause = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sleep",
                "3600",
            ])
            .spawn()
            .map(ChildGuard)
            .expect("spawn the pod's pause process (unshare)");
        // unshare forks the pod's pid 1.
        let pause_pid = pause.first_child();
        Container {
            _pause: pause,
            pause_pid,
        }
    }

    /// The command line that runs a program (appended to it) inside the container as `user`,
    /// with no capability. `own_proc`: with the pod's own `/proc` mounted (its mount
    /// namespace), as in a container; without, the host's `/proc` is seen (a pod lying
    /// about pids).
    pub fn wrapper(&self, user: PodUser, own_proc: bool) -> Vec<String> {
        let mut wrapper: Vec<String> =
            ["nsenter", "--target", &self.pause_pid.to_string(), "--pid"]
                .map(String::from)
                .into();
        if own_proc {
            wrapper.push("--mount".into());
        }
        wrapper.extend(["--", "setpriv"].map(String::from));
        if user == PodUser::Nobody {
            wrapper.extend(["--reuid=65534", "--regid=65534", "--clear-groups"].map(String::from));
        }
        wrapper.extend(
            [
                "--bounding-set=-all",
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--no-new-privs",
            ]
            .map(String::from),
        );
        wrapper
    }

    /// [`Container::wrapper`] running `program`.
    pub fn command(&self, user: PodUser, own_proc: bool, program: impl AsRef<OsStr>) -> Command {
        let wrapper = self.wrapper(user, own_proc);
        let mut command = Command::new(&wrapper[0]);
        command.args(&wrapper[1..]).arg(program);
        command
    }

    /// `drainctl ARGS...` in the container ([`Container::command`] with its own `/proc`).
    pub fn drainctl(&self, user: PodUser) -> Command {
        self.command(user, true, bin_path("drainctl"))
    }
}

//! A private network namespace per test thread, so that privileged tests can bind the same
//! ports (127.0.0.1:8080, ...), attach eBPF programs and kill sockets without touching the
//! host's network or each other, even when `cargo test` runs them in parallel.
//!
//! [`Netns::new`] moves the *calling thread* (not the whole process) into a fresh network
//! namespace with `unshare(CLONE_NEWNET)` and brings `lo` up; dropping the guard moves the
//! thread back with `setns` on a handle of the old namespace kept from before the unshare.
//!
//! What inherits the namespace, and what does not:
//! - Processes spawned from the thread while the guard lives (`std::process::Command`,
//!   `ip`, `ss`, the demo server, `drainctl`) run in the new namespace: a child is a copy of
//!   the spawning *thread*, namespaces included.
//! - Threads spawned from the thread while the guard lives also start in the new namespace,
//!   and they *stay* there after the guard is dropped (only the guard's own thread returns).
//! - Sockets belong to the namespace they were created in for their whole life, whatever
//!   thread later uses them.
//! - `/proc/self/net/...` (and `/proc/net/...`, a link to it) shows the namespace of the
//!   process's *main* thread; a test thread must read `/proc/thread-self/net/...` to see its
//!   own namespace. Child processes are single-threaded, so for them the two agree.
//!
//! Cleanup: there is none to do. The kernel deletes a network namespace when the last thing
//! that refers to it goes (threads and processes in it, sockets created in it, open handles
//! of it), so after the guard is dropped, the children are reaped and the sockets closed,
//! it disappears, also when the test panicked. Nothing is mounted under `/run/netns`, but
//! for a [`NamedNetns`], whose name goes when it is dropped.

use std::fs::File;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::socket::{self, AddressFamily, GetSockOpt as _, SockFlag, SockType};
use nix::{getsockopt_impl, sockopt_impl};

/// `SO_NETNS_COOKIE` (Linux 5.14+, asm-generic/socket.h): the namespace's cookie, unique
/// per boot and never reused, unlike its inode.
const SO_NETNS_COOKIE: libc::c_int = 71;

sockopt_impl!(NetnsCookie, GetOnly, libc::SOL_SOCKET, SO_NETNS_COOKIE, u64);

/// The calling thread's network namespace handle in procfs.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Guard for a private network namespace entered by the current thread.
///
/// Not `Send`: the namespace switch belongs to the thread that made it, and the guard must be
/// dropped on that thread to move it back.
#[derive(Debug)]
pub struct Netns {
    /// Handle of the namespace the thread was in before; `setns` target on drop.
    previous: File,
    /// Handle of the new namespace (keeps it alive while the guard lives).
    current: File,
    inode: u64,
    cookie: u64,
    _not_send: PhantomData<*const ()>,
}

impl Netns {
    /// Moves the calling thread into a fresh network namespace with `lo` up.
    ///
    /// Needs CAP_SYS_ADMIN (root). On error the thread is left in (or moved back to) the
    /// namespace it was in.
    pub fn new() -> anyhow::Result<Netns> {
        let previous = File::open(THREAD_NETNS).with_context(|| format!("open {THREAD_NETNS}"))?;
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        // Any early return from here on must move the thread back first.
        let (inode, current) =
            match File::open(THREAD_NETNS).and_then(|f| Ok((f.metadata()?.ino(), f))) {
                Ok(pair) => pair,
                Err(e) => {
                    // Best effort: still try to go back before reporting.
                    let _ = setns(&previous, CloneFlags::CLONE_NEWNET);
                    return Err(e).context(format!("open {THREAD_NETNS} after unshare"));
                }
            };
        // The guard exists now: its Drop moves the thread back on any later error.
        let mut ns = Netns {
            previous,
            current,
            inode,
            cookie: 0,
            _not_send: PhantomData,
        };
        ns.cookie = current_thread_netns_cookie().context("getsockopt(SO_NETNS_COOKIE)")?;
        ns.run_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The entry point of every privileged test.
    ///
    /// - root: returns a fresh namespace; panics if it cannot be made (that is a real failure).
    /// - not root, or not allowed to unshare (EPERM): under CI (`CI=true`) panics with
    ///   "privileged test skipped under CI", because CI must run every test; elsewhere prints
    ///   a `SKIPPED <test>: ...` line to stderr (not captured by the harness) and returns
    ///   `None`; the test then returns early and is reported as passed.
    ///
    /// ```no_run
    /// # use drain_tests::Netns;
    /// let Some(_ns) = Netns::require() else { return };
    /// ```
    pub fn require() -> Option<Netns> {
        let why_not = if !nix::unistd::geteuid().is_root() {
            "not running as root".to_string()
        } else {
            match Netns::new() {
                Ok(ns) => return Some(ns),
                Err(e) if is_eperm(&e) => format!("not allowed to unshare a netns: {e:#}"),
                Err(e) => panic!("Netns::require: could not make a network namespace: {e:#}"),
            }
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("privileged test skipped under CI ({why_not}); CI must run it as root");
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed thread>")
            .to_string();
        // Straight to the stderr handle, not eprintln!: the test harness captures (hides)
        // eprintln! output of passing tests, and a skip must be visible.
        let _ = writeln!(
            io::stderr(),
            "SKIPPED {test}: privileged test needs root and a private netns ({why_not})"
        );
        None
    }

    /// Inode number of the new namespace: the number in `readlink /proc/PID/ns/net`
    /// (`net:[INODE]`), handy to check where a process or thread lives.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The name drain-daemon gives the namespace's directory in its pin and record
    /// trees: `netns-<inode>-<cookie>`.
    pub fn dir_name(&self) -> String {
        format!("netns-{}-{}", self.inode, self.cookie)
    }

    /// A handle of the new namespace, e.g. to `setns` another thread into it.
    pub fn ns_file(&self) -> &File {
        &self.current
    }

    /// Runs `ip ARGS...` inside the namespace (as a child of this thread) and fails with its
    /// stderr if it exits non-zero. Convenience for adding addresses (`addr add 127.0.0.2/8
    /// dev lo`) and the like.
    pub fn run_ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run_ip(args)
    }
}

/// Runs `ip ARGS...` as a child of the calling thread, failing with its stderr if it
/// exits non-zero.
fn run_ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("spawn `ip {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The network namespace of a process under a name (`ip netns attach`, a bind mount under
/// /run/netns), for `ip netns exec NAME`, which runs a command alone in a mount namespace
/// of its own with a /sys of its own. Dropping it deletes the name; the namespace lives on
/// with its processes.
pub struct NamedNetns(String);

impl NamedNetns {
    /// Names the network namespace of process `pid`.
    pub fn of(pid: u32) -> anyhow::Result<NamedNetns> {
        let name = format!("drain-test-{}-{pid}", std::process::id());
        run_ip(&["netns", "attach", &name, &pid.to_string()])?;
        Ok(NamedNetns(name))
    }

    /// `ip netns exec NAME program`.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.0]).arg(program);
        command
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous, CloneFlags::CLONE_NEWNET) {
            // Cannot propagate from drop, and panicking here could abort during an unwind.
            // The thread stays in the private namespace: loud, but harmless to the host.
            eprintln!("Netns: setns back to the previous network namespace failed: {e}");
        }
    }
}

/// The inode of the namespace the calling thread is in now.
pub fn current_thread_netns_inode() -> io::Result<u64> {
    Ok(std::fs::metadata(THREAD_NETNS)?.ino())
}

/// The cookie of the namespace the calling thread is in now (a socket belongs to the
/// namespace of the thread that made it).
pub fn current_thread_netns_cookie() -> io::Result<u64> {
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    Ok(NetnsCookie.get(&probe)?)
}

fn is_eperm(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<Errno>() == Some(&Errno::EPERM))
}

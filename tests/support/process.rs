//! Finding and running the workspace's binaries from tests: the real system under test
//! (`drainctl`, the daemon) and the peer it drains (`drain-demo-server`) run as separate
//! processes, as in production, so a test must locate the built binaries and must never
//! leave a child running when it ends or panics.

use std::ffi::OsStr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::events::EventReader;

/// Path of a workspace binary (`drainctl`, `drain-demo-server`, ...) built with the same
/// profile as the running test: from `target/<profile>/deps/<test>-<hash>` (the test's own
/// executable) to `target/<profile>/<name>`.
///
/// Panics if the binary is not there: test helper contract, the message says what to run.
/// `cargo test -p drain-tests` builds this package's own binaries (`drain-demo-server`)
/// before running its tests; other packages' binaries need a workspace build.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("bin_path({name}): cannot find the running test: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("bin_path({name}): {} has no parent", exe.display()))
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "bin_path: {} does not exist: run `cargo build --workspace --bins` first \
             (the README test command does)",
            path.display()
        );
    }
    path
}

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped, also when
/// the test panics. Derefs to [`Child`].
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// The pid of the child's first child, once it has forked (polled up to 5 s): for
    /// `unshare --pid --fork ...`, the command it runs as pid 1 of the new PID namespace;
    /// for `nsenter` or `strace`, the program it runs. Panics if it has none by then.
    pub fn first_child(&self) -> i32 {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
            if let Some(child) = children
                .as_deref()
                .ok()
                .and_then(|c| c.split_whitespace().next())
            {
                return child
                    .parse()
                    .unwrap_or_else(|e| panic!("child {child:?} of {pid}: {e}"));
            }
            if Instant::now() >= deadline {
                match children {
                    Ok(_) => panic!("{pid} has no child after 5 s"),
                    Err(e) => panic!("children of {pid}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to the child.
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        let pid = i32::try_from(self.0.id()).map_err(|_| nix::errno::Errno::ESRCH)?;
        kill(Pid::from_raw(pid), sig)
    }

    /// Waits up to `timeout` for the child to exit; `Ok(None)` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.0.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then [`wait_timeout`](Self::wait_timeout).
    pub fn terminate(&mut self, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
        if self.0.try_wait()?.is_none() {
            self.signal(Signal::SIGTERM).map_err(std::io::Error::from)?;
        }
        self.wait_timeout(timeout)
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Spawns `drain-demo-server ARGS...` (e.g. `["--listen", "127.0.0.1:8080"]`) with its stdout
/// collected by an [`EventReader`] and its stderr echoed through the test's (captured)
/// stderr as `[demo-server PID stderr] ...`. Call it from the thread that
/// holds the [`Netns`](crate::Netns) guard: the server then runs in that namespace. Wait for
/// its `listening` lines ([`EventReader::wait_listening`]) before connecting.
///
/// Panics if the binary is missing or cannot be spawned (test helper contract).
pub fn spawn_demo_server<I, S>(args: I) -> (ChildGuard, EventReader)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_demo_server_via(&[], args)
}

/// Like [`spawn_demo_server`], run through a `wrapper` command that execs (or forks)
/// the server with the same stdout, e.g. `["unshare", "--pid", "--fork",
/// "--mount-proc", "--kill-child"]` for a server in a PID namespace of its own. The guard
/// then holds the wrapper: a wrapper that forks must take its child down with it
/// (`--kill-child`), or the server outlives the test.
pub fn spawn_demo_server_via<I, S>(wrapper: &[&str], args: I) -> (ChildGuard, EventReader)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let bin = bin_path("drain-demo-server");
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(&bin);
            command
        }
        None => Command::new(&bin),
    };
    command.args(args);
    spawn_demo(command)
}

/// [`spawn_demo_server`] running as user `uid` and group `gid` (for example `nobody`,
/// 65534), like a service with `User=` or `DynamicUser=`: its `/proc/PID/fd` is then
/// not readable by a root without CAP_DAC_READ_SEARCH.
pub fn spawn_demo_server_as<I, S>(uid: u32, gid: u32, args: I) -> (ChildGuard, EventReader)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(bin_path("drain-demo-server"));
    // std also drops root's supplementary groups when it changes the uid.
    command.args(args).uid(uid).gid(gid);
    spawn_demo(command)
}

fn spawn_demo(mut command: Command) -> (ChildGuard, EventReader) {
    let bin = PathBuf::from(command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let stdout = child
        .stdout
        .take()
        .unwrap_or_else(|| panic!("spawn {}: no stdout pipe", bin.display()));
    let label = format!("demo-server {}", child.id());
    if let Some(stderr) = child.stderr.take() {
        echo_lines(format!("{label} stderr"), stderr);
    }
    let events = EventReader::from_reader(&label, stdout);
    (ChildGuard(child), events)
}

/// Copies `source` line by line to this process's stderr with a `[label]` prefix, on a
/// background thread (which inherits the test harness's output capture).
fn echo_lines(label: String, source: impl std::io::Read + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(format!("echo-{label}"))
        .spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(source).lines() {
                match line {
                    Ok(l) if crate::echo_enabled() => eprintln!("[{label}] {l}"),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("echo_lines: cannot spawn thread: {e}");
    }
}

/// Raises this process's soft limit of open files to its hard limit (tests and servers
/// holding a thousand connections or more). Returns the new limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

//! Reading the shipped unit files (`systemd/`) the way the tests need them: a test that
//! runs the daemon "as the unit does" must take the capabilities from the unit itself,
//! so the unit and the test cannot drift apart; and tools the checks call (systemd-analyze,
//! setpriv, dpkg) may be missing on a developer's machine, which must skip, not fail,
//! except under CI.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// A unit file: its `Key=Value` assignments in order, comments and sections dropped
/// (the keys the tests read are unambiguous across sections).
#[derive(Debug)]
pub struct Unit {
    pub path: PathBuf,
    assignments: Vec<(String, String)>,
}

impl Unit {
    /// Reads `systemd/NAME` of the workspace. Panics if it is missing (test contract).
    pub fn shipped(name: &str) -> Unit {
        let path = units_dir().join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Unit::parse(path, &text)
    }

    pub fn parse(path: PathBuf, text: &str) -> Unit {
        let assignments = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with(['#', ';', '[']))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
            .collect();
        Unit { path, assignments }
    }

    /// Every value assigned to `key`, in order (keys like `ExecStop=` may repeat).
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.assignments
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last value of `key` (what systemd uses for single-valued keys).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values(key).last().copied()
    }

    /// The capability names of a list-valued key such as `CapabilityBoundingSet=`,
    /// lower case without `CAP_` (setpriv's spelling). An empty assignment resets the
    /// list, as in systemd.
    pub fn capabilities(&self, key: &str) -> Vec<String> {
        let mut caps = Vec::new();
        for value in self.values(key) {
            if value.is_empty() {
                caps.clear();
            }
            assert!(
                !value.starts_with('~'),
                "{}: {key}=~ (a deny list) is not supported by this reader",
                self.path.display()
            );
            caps.extend(value.split_whitespace().map(|cap| {
                cap.trim_start_matches("CAP_")
                    .trim_start_matches("cap_")
                    .to_lowercase()
            }));
        }
        caps
    }

    /// The absolute executables of every `Exec*=` line, prefixes (`-`, `+`, `@`, `!`,
    /// `:`) removed.
    pub fn executables(&self) -> Vec<PathBuf> {
        self.assignments
            .iter()
            .filter(|(key, _)| key.starts_with("Exec"))
            .filter_map(|(_, value)| value.split_whitespace().next())
            .map(|exe| PathBuf::from(exe.trim_start_matches(['-', '+', '@', '!', ':'])))
            .collect()
    }
}

/// The workspace's `systemd/` directory.
pub fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

/// The `setpriv` arguments that give a process exactly `unit`'s capabilities:
/// bounding set `CapabilityBoundingSet=`, inheritable and ambient `AmbientCapabilities=`,
/// and `NoNewPrivileges=` (a root process then has the bounding set as its permitted
/// and effective sets, as under systemd).
pub fn setpriv_args(unit: &Unit) -> Vec<String> {
    let list = |caps: &[String]| {
        std::iter::once("-all".to_string())
            .chain(caps.iter().map(|cap| format!("+{cap}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    let bounding = unit.capabilities("CapabilityBoundingSet");
    let ambient = unit.capabilities("AmbientCapabilities");
    let mut args = vec![
        format!("--bounding-set={}", list(&bounding)),
        format!("--inh-caps={}", list(&ambient)),
        format!("--ambient-caps={}", list(&ambient)),
    ];
    if unit.value("NoNewPrivileges") == Some("yes") {
        args.push("--no-new-privs".into());
    }
    args
}

/// The path of `tool` in PATH, or `None` with a visible SKIPPED line, except under
/// `CI=true`, where a missing tool fails the test (CI installs them: `cargo xtask setup`).
pub fn require_tool(tool: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is missing under CI: `cargo xtask setup` installs it");
        }
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed thread>")
            .to_string();
        // Straight to stderr: the harness hides eprintln! of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {tool} is not installed");
    }
    found
}

//! The Debian package from `cargo xtask package`, installed for real (`dpkg --root`
//! into a scratch root, then removed): everything the units name is where they name it,
//! systemd accepts the installed units with the installed man pages, and the man pages
//! and completions come from the real command line. A unit naming /usr/local/bin while
//! the package installs to /usr/bin fails here.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use drain_tests::systemd::{require_tool, Unit};

const PACKAGE: &str = "drain-daemon";

/// Builds the package with `cargo xtask package` (incremental after the first time) and
/// returns its path.
fn build_package(workspace: &Path) -> PathBuf {
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace)
        .args(["run", "-q", "-p", "xtask", "--", "package"])
        .output()
        .expect("run cargo xtask package");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cargo xtask package failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Its lintian report is part of what this test shows (errors already failed it).
    println!("{stdout}");
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("package: "))
        .map(PathBuf::from)
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .unwrap_or_else(|| panic!("no `package: PATH.deb` line in:\n{stdout}"))
}

fn run_ok(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn the_package_installs_everything_the_units_name() {
    let Some(dpkg) = require_tool("dpkg") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "installing a package needs root under CI"
        );
        eprintln!("SKIPPED: installing the package into a scratch root needs root");
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deb = build_package(&workspace);

    // A scratch root with an empty dpkg database: a real install and removal that
    // never touches the machine's packages. The package has no maintainer scripts;
    // libc6 is the machine's, hence --force-depends.
    let root = std::env::temp_dir().join(format!("drain-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    let dpkg_in_root = || {
        let mut command = Command::new(&dpkg);
        command
            .arg(format!("--root={}", root.display()))
            .arg(format!("--log={}", root.join("dpkg.log").display()))
            .arg("--force-depends");
        command
    };
    run_ok(dpkg_in_root().arg("--install").arg(&deb));
    let installed = |path: &str| root.join(path.trim_start_matches('/'));

    // The units in the package are the repository's, and what they run is installed.
    let mut units = Vec::new();
    for name in ["drain-daemon.service", "drain-daemon.socket"] {
        let path = installed(&format!("/lib/systemd/system/{name}"));
        let shipped = Unit::shipped(name);
        assert_eq!(
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            std::fs::read(&shipped.path).unwrap(),
            "{name} in the package differs from systemd/{name}"
        );
        units.push(path);
    }
    let example = Unit::shipped("example-web.service");
    for unit in [Unit::shipped("drain-daemon.service"), example] {
        for exe in unit.executables() {
            let name = exe.file_name().unwrap().to_str().unwrap();
            if matches!(name, "drain-daemon" | "drainctl") {
                let path = installed(exe.to_str().unwrap());
                assert!(
                    path.is_file(),
                    "{} names {}, which the package does not install",
                    unit.path.display(),
                    exe.display()
                );
            }
        }
    }
    assert!(installed("/usr/share/doc/drain-daemon/examples/example-web.service").is_file());
    // The README's links to docs/ resolve in the installed tree too.
    for doc in [
        "README.md",
        "docs/daemon.md",
        "docs/refusal.md",
        "docs/trust-model.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "copyright",
    ] {
        let path = installed(&format!("/usr/share/doc/{PACKAGE}/{doc}"));
        assert!(path.is_file(), "{} is missing", path.display());
    }

    // systemd on the installed tree: the Exec paths and the Documentation= man pages
    // (man looks in the root's man directory) must all resolve.
    if let Some(analyze) = require_tool("systemd-analyze") {
        run_ok(
            Command::new(analyze)
                .env("MANPATH", installed("/usr/share/man"))
                .args(["verify", "--recursive-errors=no"])
                .arg(format!("--root={}", root.display()))
                .args(&units),
        );
    }

    // Generated from the real clap definitions: the drain page documents its options,
    // the completions know the subcommands.
    let drain_page =
        run_ok(Command::new("zcat").arg(installed("/usr/share/man/man1/drainctl-drain.1.gz")));
    for option in ["accept\\-grace", "close\\-grace", "\\-\\-pid"] {
        assert!(
            drain_page.contains(option),
            "drainctl-drain.1 lacks {option}"
        );
    }
    let bash =
        std::fs::read_to_string(installed("/usr/share/bash-completion/completions/drainctl"))
            .unwrap();
    assert!(bash.contains("release") && bash.contains("--accept-grace"));
    assert!(installed("/usr/share/zsh/vendor-completions/_drainctl").is_file());
    assert!(installed("/usr/share/fish/vendor_completions.d/drainctl.fish").is_file());
    assert!(installed("/usr/share/man/man8/drain-daemon.8.gz").is_file());
    let version = run_ok(Command::new(installed("/usr/bin/drainctl")).arg("--version"));
    assert!(version.starts_with("drainctl "), "{version}");

    // Removal takes every file away again.
    run_ok(dpkg_in_root().arg("--remove").arg(PACKAGE));
    for gone in [
        "/usr/bin/drainctl",
        "/usr/sbin/drain-daemon",
        "/lib/systemd/system/drain-daemon.service",
    ] {
        assert!(
            !installed(gone).exists(),
            "{gone} is left after dpkg --remove"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

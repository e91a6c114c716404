//! Writes the man pages and shell completions of `drainctl` and `drain-daemon` into a
//! directory, from the same clap definitions the binaries parse their arguments with, so
//! the package cannot document an option the binaries do not have. `cargo xtask package`
//! runs it; it is an example (not a binary) so the package does not ship it.
//!
//! `package-docs DIR` writes DIR/man/ (drainctl.1 and one page per subcommand, drain-daemon.8)
//! and DIR/completions/ (drainctl's, for bash, zsh and fish).

use std::{path::Path, process::ExitCode};

use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: package-docs DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("package-docs: {err}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // drainctl is a user command (section 1; `status` needs no root); the daemon is an
    // administration program in /usr/sbin (section 8).
    clap_mangen::generate_to(drain_daemon::cli::command(), &man)?;
    clap_mangen::Man::new(drain_daemon::daemon::command())
        .section("8")
        .generate_to(&man)?;
    // Only drainctl: the daemon is started by systemd, not typed.
    let mut drainctl = drain_daemon::cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut drainctl, "drainctl", &completions)?;
    }
    Ok(())
}

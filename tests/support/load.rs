//! A real keep-alive load: hey (Go's net/http client and its keep-alive pool), as users
//! put a service under load, with its summary read back.

use std::process::Command;

/// What one hey run reported.
#[derive(Debug)]
pub struct HeyRun {
    /// hey's whole summary, for assertion messages.
    pub summary: String,
    /// The lines of its error distribution (`[count] error`), empty when none failed.
    pub errors: Vec<String>,
    /// Responses with status 200.
    pub ok: u64,
}

impl HeyRun {
    /// Requests that failed (no response), summed over the error distribution.
    pub fn failed(&self) -> u64 {
        self.errors
            .iter()
            .filter_map(|line| {
                line.trim()
                    .strip_prefix('[')?
                    .split(']')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

/// Runs hey with `args` (the URL last) and reads its summary; panics if hey is missing
/// (`cargo xtask setup` installs it) or fails to run.
pub fn hey(args: &[&str]) -> HeyRun {
    let output = Command::new("hey")
        .args(args)
        .output()
        .expect("hey is installed (cargo xtask setup)");
    let summary = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "hey failed: {summary}");
    let errors = summary
        .split("Error distribution:")
        .nth(1)
        .map(|errors| {
            errors
                .lines()
                .filter(|l| l.trim().starts_with('['))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let ok = summary
        .split("Status code distribution:")
        .nth(1)
        .and_then(|codes| {
            codes.lines().find_map(|l| {
                let (code, count) = l.trim().split_once('\t')?;
                (code == "[200]").then(|| count.split_whitespace().next()?.parse().ok())?
            })
        })
        .unwrap_or(0);
    HeyRun {
        summary,
        errors,
        ok,
    }
}

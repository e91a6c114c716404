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
    /// Responses of any status.
    pub responses: u64,
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
    HeyRun::parse(summary)
}

impl HeyRun {
    /// Reads hey's printed summary (for a hey run some other way, e.g. in the background
    /// and stopped with SIGINT, after which it prints the same summary).
    pub fn parse(summary: String) -> HeyRun {
        let errors = section(&summary, "Error distribution:")
            .filter(|l| l.trim().starts_with('['))
            .map(str::to_string)
            .collect();
        let mut ok = 0;
        let mut responses = 0;
        for (code, count) in section(&summary, "Status code distribution:").filter_map(|l| {
            let (code, count) = l.trim().split_once('\t')?;
            Some((code, count.split_whitespace().next()?.parse::<u64>().ok()?))
        }) {
            responses += count;
            if code == "[200]" {
                ok += count;
            }
        }
        HeyRun {
            summary,
            errors,
            ok,
            responses,
        }
    }
}

/// The lines of one section of hey's summary: after `heading`, up to the blank line.
fn section<'a>(summary: &'a str, heading: &str) -> impl Iterator<Item = &'a str> {
    summary
        .split(heading)
        .nth(1)
        .into_iter()
        .flat_map(|rest| rest.lines().skip(1).take_while(|l| !l.trim().is_empty()))
}

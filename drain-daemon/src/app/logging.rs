//! Where `drainctl` and `drain-daemon` log: text on stderr, or journald for the daemon
//! when stderr is the journal ([`super::journal`]). `-v`/`-q` pick the level, `RUST_LOG`
//! overrides it.

use std::io::IsTerminal as _;

use tracing_subscriber::fmt::MakeWriter;

/// Logs text to `stderr`, a writer the caller picks: `drainctl`'s clears its live
/// progress line first.
pub fn init<W>(verbose: u8, quiet: bool, stderr: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    install(verbose, quiet, None, stderr);
}

/// Logs to journald when stderr is the journal ([`super::journal`]), as text on stderr
/// otherwise, or when journald's socket cannot be opened (said on stderr, which then
/// still reaches the journal, at one priority).
pub fn init_for_daemon(verbose: u8) {
    let journal = if super::journal::under_journal() {
        match tracing_journald::Layer::new() {
            Ok(layer) => Some(layer.with_syslog_identifier("drain-daemon".into())),
            Err(err) => {
                eprintln!("drain-daemon: stderr is the journal, but journald's socket cannot be opened ({err}): logging text to stderr");
                None
            }
        }
    } else {
        None
    };
    install(verbose, false, journal, std::io::stderr);
}

fn install<W>(verbose: u8, quiet: bool, journal: Option<tracing_journald::Layer>, stderr: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let default = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` also routes `log` records (aya-log's eBPF records) into tracing.
    let _ = match journal {
        Some(journal) => registry.with(journal).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
}

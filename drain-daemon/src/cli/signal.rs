//! The signals that end a drain early, and the exit code each leaves: SIGINT is a person
//! aborting (stop refusing too), SIGTERM the service manager stopping drainctl (keep
//! refusing until the listener closes).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use crate::{app::Exit, drain::Cancel};

/// Set when SIGTERM (not SIGINT) ended a drain early: the exit code tells them apart.
static TERMINATED: AtomicBool = AtomicBool::new(false);

/// Resolves when the drain should stop early: SIGINT (a person aborting: stop refusing)
/// or SIGTERM (the service manager stopping us: keep refusing until the listener closes).
/// The handlers are installed when this is called, not when the future is first polled,
/// so a signal right after the steering is in place is not lost.
pub(super) fn interrupted() -> impl std::future::Future<Output = Cancel> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = signal(SignalKind::interrupt()).and_then(|interrupt| {
        signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
    });
    async move {
        let Ok((mut interrupt, mut terminate)) = handlers else {
            warn!("cannot install signal handlers; SIGINT and SIGTERM end drainctl at once");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => Cancel::Abort,
            _ = terminate.recv() => {
                TERMINATED.store(true, Ordering::Relaxed);
                Cancel::Stop
            }
        }
    }
}

/// The exit code of a drain a signal ended.
pub(super) fn exit_code() -> Exit {
    if TERMINATED.load(Ordering::Relaxed) {
        Exit::Terminated
    } else {
        Exit::Interrupted
    }
}

//! What drains leave behind, swept by the daemon: pins whose listeners are closed
//! ([`steer::sweep_stale`]) and records no drain and no listener stands behind
//! ([`announce::sweep_stale`]), in every network namespace. A namespace that is deleted
//! leaves both, and a pod that may make namespaces could otherwise fill /run and bpffs
//! with them. Swept when the daemon starts, after each drain it runs, and every
//! [`PERIOD`] for the drains run by drainctl on its own. A sweep leaves alone whatever a
//! running drain holds, so it never makes one fail.

use std::{sync::Mutex, time::Duration};

use crate::{announce, steer};

/// How often the daemon sweeps between drains.
pub const PERIOD: Duration = Duration::from_secs(60);

/// One sweep at a time: two would only find each other's work.
static SWEEPING: Mutex<()> = Mutex::new(());

/// Sweeps pins and records now, on the calling thread (it reads `/proc` and the trees:
/// not on an async worker).
pub fn sweep() {
    let _one = SWEEPING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    steer::sweep_stale();
    announce::sweep_stale();
}

/// Sweeps after a drain, off the async workers, without holding up its reply.
pub fn after_drain() {
    drop(tokio::task::spawn_blocking(sweep));
}

/// Sweeps every [`PERIOD`], forever.
pub async fn every_period() {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + PERIOD, PERIOD);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let _ = tokio::task::spawn_blocking(sweep).await;
    }
}

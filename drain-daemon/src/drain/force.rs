//! `--force` at the deadline: what of the drain is still open is shut down, then reset.

use std::{mem, time::Duration};

use tracing::warn;

use super::{blocking, ownership::Ownership, report::Tally, Drain, DrainError};
use crate::{
    close::{self, CloseMethod},
    inventory::{Inventory, PortInventory},
};

impl Drain<'_> {
    /// Forces the drain's connections of the last pass closed; afterwards the last pass
    /// is the scan after the force. Nothing is forced when the scan is stuck.
    pub(super) fn force(&mut self) -> Result<(), DrainError> {
        let Some(probe) = self.scanner.as_deref_mut() else {
            warn!(
                port = self.plan.port,
                "nothing forced: the port's scan was still running after the deadline"
            );
            return Ok(());
        };
        let remaining = mem::take(&mut self.last);
        self.last = blocking::run(|| {
            force_remaining(
                &mut probe.inventory,
                &mut probe.ownership,
                remaining,
                &mut self.tally,
                self.plan.close_grace,
            )
        })?;
        self.tally.unknown_owner = probe.ownership.unknown_owner();
        Ok(())
    }
}

/// `--force` at the deadline: shuts down everything of the drain's still open (FIN),
/// waits `close_grace`, then resets what of it is left and its queued connections.
/// Returns the drain's part of the scan after that.
fn force_remaining(
    inventory: &mut Inventory,
    ownership: &mut Ownership,
    remaining: PortInventory,
    tally: &mut Tally,
    close_grace: Duration,
) -> Result<PortInventory, DrainError> {
    for connection in &remaining.connections {
        match close::force(inventory, connection) {
            Ok(CloseMethod::Graceful) => tally.forced_gracefully += 1,
            Ok(CloseMethod::Abortive) => tally.forced_abortively += 1,
            Err(err) => {
                warn!(peer = %connection.socket.id.remote, "cannot force a connection closed: {err}")
            }
        }
    }
    std::thread::sleep(close_grace);
    let after = ownership.scan(inventory)?.ours;
    for id in after
        .connections
        .iter()
        .map(|c| &c.socket.id)
        .chain(after.queued.iter().map(|s| &s.id))
    {
        match close::reset(inventory, id) {
            Ok(true) => tally.forced_abortively += 1,
            Ok(false) => {}
            Err(err) => warn!(peer = %id.remote, "cannot reset a connection: {err}"),
        }
    }
    warn!(
        gracefully = tally.forced_gracefully,
        abortively = tally.forced_abortively,
        "deadline reached: forced the remaining connections closed (--force)"
    );
    Ok(ownership.scan(inventory)?.ours)
}

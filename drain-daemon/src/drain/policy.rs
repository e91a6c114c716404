//! How a pass closes connections: each way is a [`ClosePolicy`], and a pass runs them in
//! one fixed order ([`Policies::standard`]). A policy chooses, and the pass acts: FINs
//! at once, closes through the paced executor ([`super::paced`]), which spreads them by
//! the schedule and stops at the deadline; only the in-band close acts itself, on its
//! program's map, as the kernel closes for it. A new way to ask a client to leave
//! (HTTP/2's GOAWAY) is one more policy.
//!
//! The order, and why:
//!
//! 1. [`InBand`] (`Connection: close` in a response, a websocket close frame): arms the
//!    busy connections at every pass, the last included, so a client is asked as soon
//!    as a response goes out, between passes.
//! 2. [`FinAfterGrace`]: a server asked before that still holds an idle connection past
//!    the close grace gets its FIN from the drain, outside the schedule (that close was
//!    counted when asked).
//! 3. [`AtBoundary`]: busy connections between a response and their client's next
//!    request, before the idle ones, as their margin shrinks while they wait.
//! 4. [`Idle`]: connections that moved no data for the quiet period.
//!
//! Each policy's closes are in random order, so no client is always last.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{boundary::Rhythms, in_band::InBand, report::Tally, DrainPlan};
use crate::{
    close::When,
    inventory::{Connection, PortInventory},
};

/// What a pass's policies choose from: its scan of the drain's sockets and what the
/// drain learned of each client's rhythm.
#[derive(Clone, Copy)]
pub(super) struct Seen<'s> {
    pub(super) snapshot: &'s PortInventory,
    pub(super) rhythms: &'s Rhythms,
}

/// A connection the paced executor is to close, and how it may be.
pub(super) type Due<'s> = (&'s Connection, When<'s>);

/// What a policy chose for one connection.
pub(super) enum Step<'s> {
    /// Close it through the paced executor.
    Close(Due<'s>),
    /// Send its server's FIN now.
    Fin(&'s Connection),
}

/// One way of closing a drain's connections.
pub(super) trait ClosePolicy: Send {
    /// Runs at every pass before the drain checks whether it is done.
    fn prepare(&mut self, _snapshot: &PortInventory) {}

    /// What to do at this pass; `asked` holds when the drain asked each server (by
    /// cookie) to close a connection.
    fn choose<'s>(&mut self, _seen: Seen<'s>, _asked: &HashMap<u64, Instant>) -> Vec<Step<'s>> {
        Vec::new()
    }

    /// Adds what it did to the report's counts.
    fn report(&self, _tally: &mut Tally) {}
}

/// The policies of a drain, in the order its passes run them.
pub(super) struct Policies(Vec<Box<dyn ClosePolicy>>);

impl Policies {
    /// Starts loading the in-band close's program unless the plan turns it off.
    pub(super) fn standard(plan: &DrainPlan) -> Self {
        Self(vec![
            Box::new(InBand::start(
                plan.no_connection_close,
                plan.websocket_close,
            )),
            Box::new(FinAfterGrace::new(plan.close_grace)),
            Box::new(AtBoundary),
            Box::new(Idle),
        ])
    }

    pub(super) fn prepare(&mut self, snapshot: &PortInventory) {
        for policy in &mut self.0 {
            policy.prepare(snapshot);
        }
    }

    pub(super) fn choose<'s>(
        &mut self,
        seen: Seen<'s>,
        asked: &HashMap<u64, Instant>,
    ) -> Vec<Step<'s>> {
        self.0
            .iter_mut()
            .flat_map(|policy| policy.choose(seen, asked))
            .collect()
    }

    pub(super) fn report(&self, tally: &mut Tally) {
        for policy in &self.0 {
            policy.report(tally);
        }
    }
}

/// Idle connections the drain has not asked to close before.
pub(super) struct Idle;

impl ClosePolicy for Idle {
    fn choose<'s>(&mut self, seen: Seen<'s>, asked: &HashMap<u64, Instant>) -> Vec<Step<'s>> {
        let mut due: Vec<Step<'s>> = seen
            .snapshot
            .idle()
            .filter(|c| !asked.contains_key(&c.socket.id.cookie))
            .map(|c| Step::Close((c, When::Idle)))
            .collect();
        fastrand::shuffle(&mut due);
        due
    }
}

/// Busy connections found early in their client's pause ([`super::boundary`]), not
/// asked before.
pub(super) struct AtBoundary;

impl ClosePolicy for AtBoundary {
    fn choose<'s>(&mut self, seen: Seen<'s>, asked: &HashMap<u64, Instant>) -> Vec<Step<'s>> {
        let mut due: Vec<Step<'s>> = seen
            .snapshot
            .in_flight()
            .filter(|c| !asked.contains_key(&c.socket.id.cookie))
            .filter_map(|c| {
                seen.rhythms
                    .at_boundary(c)
                    .map(|when| Step::Close((c, when)))
            })
            .collect();
        fastrand::shuffle(&mut due);
        due
    }
}

/// The FIN of an idle connection whose server read EOF at least the close grace ago
/// and still holds it, once per connection.
pub(super) struct FinAfterGrace {
    close_grace: Duration,
    sent: HashSet<u64>,
}

impl FinAfterGrace {
    pub(super) fn new(close_grace: Duration) -> Self {
        Self {
            close_grace,
            sent: HashSet::new(),
        }
    }
}

impl ClosePolicy for FinAfterGrace {
    fn choose<'s>(&mut self, seen: Seen<'s>, asked: &HashMap<u64, Instant>) -> Vec<Step<'s>> {
        seen.snapshot
            .idle()
            .filter(|c| {
                let cookie = c.socket.id.cookie;
                asked
                    .get(&cookie)
                    .is_some_and(|at| at.elapsed() >= self.close_grace)
                    && self.sent.insert(cookie)
            })
            .map(Step::Fin)
            .collect()
    }
}

/// The in-band close: its program arms the busy connections, and counts what it wrote.
impl ClosePolicy for InBand {
    fn prepare(&mut self, snapshot: &PortInventory) {
        if let Some(close_http) = self.ready() {
            super::in_band::arm_busy(close_http, snapshot);
        }
    }

    fn report(&self, tally: &mut Tally) {
        tally.connection_close_sent = self.loaded().map_or(0, |c| c.rewritten());
        tally.websocket_close_sent = self.loaded().map_or(0, |c| c.websockets_closed());
    }
}

#[cfg(test)]
mod tests;

//! Who hears how a drain goes: the drain tells an observer after each pass, at its end
//! and when it fails, and owns no output of its own. The status records
//! ([`crate::announce::Announcer`]) and the `progress` callback of
//! [`drain`](super::drain) are observers; several are one as a tuple.

use super::{Outcome, Progress};

/// Told of a drain's progress, end and failure, in that order of a drain's life.
pub trait DrainObserver {
    /// After every pass that closes or waits (not the last one, which finds nothing left).
    fn progress(&mut self, progress: &Progress);

    /// The drain ended with `outcome`, before the refusal is kept or released; `refused`
    /// and `steered` are the steering's counts then.
    fn finished(&mut self, _outcome: Outcome, _refused: u64, _steered: u64) {}

    /// The drain stops on an error of its passes (its scans failed too often).
    fn failed(&mut self, _refused: u64, _steered: u64) {}
}

/// A `progress` callback, as an observer that hears nothing else.
pub(super) struct OnProgress<F>(pub(super) F);

impl<F: FnMut(&Progress)> DrainObserver for OnProgress<F> {
    fn progress(&mut self, progress: &Progress) {
        (self.0)(progress);
    }
}

/// An observer that may be missing (the status records outside any namespace).
impl<O: DrainObserver> DrainObserver for Option<O> {
    fn progress(&mut self, progress: &Progress) {
        if let Some(observer) = self {
            observer.progress(progress);
        }
    }

    fn finished(&mut self, outcome: Outcome, refused: u64, steered: u64) {
        if let Some(observer) = self {
            observer.finished(outcome, refused, steered);
        }
    }

    fn failed(&mut self, refused: u64, steered: u64) {
        if let Some(observer) = self {
            observer.failed(refused, steered);
        }
    }
}

/// Two observers, told in order.
impl<A: DrainObserver, B: DrainObserver> DrainObserver for (A, B) {
    fn progress(&mut self, progress: &Progress) {
        self.0.progress(progress);
        self.1.progress(progress);
    }

    fn finished(&mut self, outcome: Outcome, refused: u64, steered: u64) {
        self.0.finished(outcome, refused, steered);
        self.1.finished(outcome, refused, steered);
    }

    fn failed(&mut self, refused: u64, steered: u64) {
        self.0.failed(refused, steered);
        self.1.failed(refused, steered);
    }
}

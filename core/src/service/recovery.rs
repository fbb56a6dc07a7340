//! What a service picks up again when it starts on a store that kept its state: the timers
//! of its active sagas, what it recorded but did not send, and unfinished compensations.
//! Purging what the retention no longer needs runs beside it.

use std::sync::Arc;

use tracing::{info, warn};

use super::dispatch::Work;
use super::runtime::Runtime;
use crate::store::Recovery;

impl Runtime {
    /// Re-arms the timers, queues the unsent events for the relay and the unfinished
    /// compensations for the workers. A deadline that passed while the service was down
    /// fires at once (after the grace, at a participant that did not start the saga).
    ///
    /// On a store other instances may share, an unfinished compensation may be another live
    /// instance's work in progress: running it here too would run its side effects twice.
    /// It is left to the broker, which delivers the abort of a compensation a gone instance
    /// left unfinished again. Unsent events are sent (another instance may be sending them
    /// too: their consumers drop the duplicate by its id).
    pub(super) fn recover(&self, recovery: Recovery) {
        let Recovery {
            timers,
            mut unfinished,
            unsent,
        } = recovery;
        if self.store().is_shared() {
            unfinished.clear();
        }
        if !(timers.is_empty() && unfinished.is_empty() && unsent.is_empty()) {
            info!(
                service = %self.name(), store = self.store().name(),
                timers = timers.len(), unsent = unsent.len(), unfinished = unfinished.len(),
                "recovered saga state"
            );
        }
        for saga in timers {
            // A deadline that passed while the service was down fires after the grace, even
            // at the initiator: an abort another participant published meanwhile is
            // received first, and no second one is sent.
            let overdue = saga.deadline.has_passed(self.now());
            self.arm(saga.saga_id, saga.deadline, saga.initiated_here && !overdue);
        }
        self.outbox().retry(super::outbox::oldest_first(unsent));
        for saga in unfinished {
            self.dispatch(saga, Work::Resume);
        }
    }

    /// Purges, every `purge_interval`, the records and inbox ids past the retention.
    pub(super) async fn purge(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stopped() => return,
                () = tokio::time::sleep(self.options().purge_interval) => {}
            }
            let Some(before) = self.now().checked_sub(self.options().retention) else {
                continue;
            };
            match self.store().purge(self.name(), before).await {
                Ok(purged) if purged.sagas + purged.handled > 0 => {
                    info!(service = %self.name(), %purged, "purged finished sagas past the retention");
                }
                Ok(_) => {}
                Err(error) => {
                    warn!(service = %self.name(), %error, "cannot purge; trying again later")
                }
            }
        }
    }
}

//! Several instances of a service on one shared store: the work an instance held when it
//! went (its deadline timers, what it recorded but did not send) is claimed in the store
//! and done by the instances that remain.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use super::dispatch::Work;
use super::runtime::Runtime;
use crate::store::Claim;

/// The most sagas, and the most events, one look claims.
const CLAIM_LIMIT: usize = 512;

impl Runtime {
    /// Looks twice per [`takeover_after`](crate::ServiceOptions::takeover_after) for work
    /// nobody did, claims it and does it, until stopped.
    pub(super) async fn take_over(self: Arc<Self>) {
        let after = self.options().takeover_after;
        loop {
            tokio::select! {
                () = self.stopped() => return,
                () = tokio::time::sleep(after / 2) => {}
            }
            let now = self.now();
            let Some(claim) = self.claim_at(now) else {
                continue;
            };
            match self.store().claim(self.name(), &claim).await {
                Ok(claimed) if claimed.is_empty() => {}
                Ok(claimed) => {
                    info!(
                        service = %self.name(), timers = claimed.timers.len(), unsent = claimed.unsent.len(),
                        "taking over overdue deadlines and unsent events no instance took care of"
                    );
                    self.metrics
                        .taken_over(claimed.timers.len(), claimed.unsent.len());
                    for saga in claimed.timers {
                        self.dispatch(saga.saga_id, Work::DeadlinePassed);
                    }
                    self.outbox()
                        .retry(super::outbox::oldest_first(claimed.unsent));
                }
                Err(error) => {
                    warn!(service = %self.name(), %error, "cannot look for work to take over; trying again later")
                }
            }
        }
    }

    /// What to claim at `now`: deadlines overdue by more than the grace and the take-over
    /// delay, events unsent for longer than the delay, for as long as the delay.
    fn claim_at(&self, now: SystemTime) -> Option<Claim> {
        let after = self.options().takeover_after;
        Some(Claim {
            deadlines_before: now.checked_sub(self.options().deadline_grace + after)?,
            recorded_before: now.checked_sub(after)?,
            now,
            until: now + after,
            limit: CLAIM_LIMIT,
        })
    }
}

//! Rule 8: deadlines without an orchestrator. Every participant holding work for a saga
//! keeps a timer at its deadline; whichever fires first records and publishes the abort.

use std::sync::Arc;

use tracing::{info, warn, Instrument};

use super::dispatch::Work;
use super::handling::Handling;
use super::runtime::{Infrastructure, Runtime};
use crate::deadline::Deadline;
use crate::ids::SagaId;
use crate::journal::{AbortReason, SagaRecord, SagaStatus};
use crate::telemetry;

impl Runtime {
    /// Fires deadline timers into the sagas' queues, until stopped.
    pub(super) async fn fire_deadlines(self: Arc<Self>) {
        loop {
            let saga = tokio::select! {
                biased;
                () = self.stopped() => return,
                saga = self.timers.next_due(&*self.definition().clock) => saga,
            };
            self.dispatch(saga, Work::DeadlinePassed);
        }
    }

    /// The saga's timer fell due. Unless the saga ended meanwhile, abort it; like every
    /// other participant, this one compensates when the abort arrives.
    pub(super) async fn process_deadline(&self, saga: SagaId) {
        if let Err(error) = self.again_on_conflict(|| self.on_deadline(saga)).await {
            warn!(service = %self.name(), saga_id = %saga, %error, "cannot record the timeout; retrying");
            self.timers
                .arm(saga, self.now() + self.options().redelivery_delay);
        }
    }

    async fn on_deadline(&self, saga: SagaId) -> Result<(), Infrastructure> {
        let loaded = self.store().load(self.name(), saga, None).await?;
        let mut handling = Handling::new(saga, loaded.record, loaded.version);
        let Some(record) = handling.record() else {
            return Ok(());
        };
        if record.status != SagaStatus::Active || record.abort_published {
            return Ok(());
        }
        if !record.deadline.has_passed(self.now()) {
            self.arm_timer(record);
            return Ok(());
        }
        let root = record
            .steps
            .first()
            .filter(|_| record.initiated_here)
            .map(|start| &start.output.trace);
        let span = telemetry::deadline_span(self.name(), saga, &record.latest_trace(), root);
        let deadline = record.deadline;
        async {
            info!(service = %self.name(), saga_id = %saga, %deadline, "deadline passed; aborting the saga");
            let detail = format!("deadline {deadline} passed");
            self.record_abort(&mut handling, None, AbortReason::TimedOut, detail)?;
            self.commit(&mut handling).await
        }
        .instrument(span)
        .await
    }

    /// Arms the saga's deadline timer. The initiator fires at the deadline; the others a
    /// grace period after it (or after now, when they learn late that it passed), so that
    /// normally the initiator's abort arrives first and theirs is never sent.
    pub(super) fn arm_timer(&self, record: &SagaRecord) {
        self.arm(record.saga_id, record.deadline, record.initiated_here);
    }

    pub(super) fn arm(&self, saga: SagaId, deadline: Deadline, initiated_here: bool) {
        let mut at = deadline.instant().max(self.now());
        if !initiated_here {
            at += self.options().deadline_grace;
        }
        self.timers.arm(saga, at);
    }
}

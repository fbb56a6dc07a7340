//! Rule 5: an abort makes every participant compensate the steps it did, newest first, once,
//! and acknowledge; rule 6: an abort that arrives before a step leaves a tombstone. Also how
//! a service records an abort of its own (a rejection, a failure, its deadline).

use std::sync::Arc;

use tracing::{error, info, warn, Instrument, Span};

use super::handling::Handling;
use super::runtime::{to_raw, Infrastructure, Runtime, Settle};
use crate::context::Context;
use crate::envelope::{Envelope, SagaKind};
use crate::event::Event;
use crate::ids::SagaId;
use crate::journal::{AbortReason, CompensationState, SagaStatus};
use crate::saga::{SagaAborted, SagaCompensated};
use crate::store::{Outgoing, OutgoingKind, TransactionSlot};
use crate::telemetry::{self, DeadLetterReason, HandlerLabel};

impl Runtime {
    pub(super) async fn on_abort(
        &self,
        envelope: &Envelope,
        mut handling: Handling,
    ) -> Result<Settle, Infrastructure> {
        let aborted: SagaAborted = match serde_json::from_str(envelope.data.get()) {
            Ok(aborted) => aborted,
            Err(error) => {
                self.metrics.dead_lettered(DeadLetterReason::InvalidAbort);
                return Ok(Settle::DeadLetter(format!("invalid abort event: {error}")));
            }
        };
        let record = handling.record_for(envelope);
        if record.is_aborted() && record.compensation_acknowledged {
            return Ok(Settle::Ack);
        }
        if !record.is_aborted() {
            record.status = SagaStatus::Aborted {
                reason: aborted.reason,
            };
            record.abort = Some(Box::new(envelope.clone()));
            self.timers.cancel(record.saga_id);
            handling.ended(Some(aborted.reason));
        }
        self.compensate_all(&mut handling).await?;
        Ok(Settle::Ack)
    }

    /// After a restart: finishes the compensation of a saga whose abort was handled in part.
    pub(super) async fn process_resume(&self, saga: SagaId) {
        if let Err(error) = self.again_on_conflict(|| self.resume(saga)).await {
            warn!(service = %self.name(), saga_id = %saga, %error, "cannot resume the compensation now; the abort's redelivery will");
        }
    }

    async fn resume(&self, saga: SagaId) -> Result<(), Infrastructure> {
        let loaded = self.store().load(self.name(), saga, None).await?;
        let mut handling = Handling::new(saga, loaded.record, loaded.version);
        let Some(record) = handling.record() else {
            return Ok(());
        };
        if !record.is_aborted() || record.compensation_acknowledged {
            return Ok(());
        }
        info!(service = %self.name(), saga_id = %saga, "resuming an unfinished compensation");
        self.compensate_all(&mut handling).await
    }

    /// Runs the compensation of every step not yet undone, newest first, committing each
    /// with its own writes; then acknowledges, recording the abort as handled. Under the
    /// reverse order, only once the later steps of the saga are undone: until then the
    /// record is committed as it is, and an acknowledgement kept later calls this again.
    pub(super) async fn compensate_all(
        &self,
        handling: &mut Handling,
    ) -> Result<(), Infrastructure> {
        let Some(record) = handling.record() else {
            return Ok(());
        };
        let Some(abort) = record.abort.clone() else {
            return Ok(());
        };
        if self.compensation_waits(record) {
            return self.commit(handling).await;
        }
        for position in (0..record.steps.len()).rev() {
            let Some(record) = handling.record() else {
                break;
            };
            let step = &record.steps[position];
            if step.compensation != CompensationState::Pending {
                continue;
            }
            let output = step.output.clone();
            let transaction = self.transaction_slot();
            let state = self.compensate(&output, &abort, &transaction).await;
            match &state {
                CompensationState::Compensated => handling.join(transaction.take()?),
                CompensationState::Failed { reason } => handling.send(
                    Outgoing {
                        envelope: output,
                        kind: OutgoingKind::DeadLetter {
                            reason: reason.clone(),
                        },
                    },
                    Span::none(),
                ),
                CompensationState::Pending | CompensationState::NotRequired => {}
            }
            let not_required = state == CompensationState::NotRequired;
            if let Some(record) = handling.record_mut() {
                record.steps[position].compensation = state;
            }
            if !not_required {
                // Committed after each one, so a crash never repeats a finished compensation.
                self.commit(handling).await?;
            }
        }

        let Some(record) = handling.record_mut() else {
            return Ok(());
        };
        let types_in = |wanted: fn(&CompensationState) -> bool| {
            record
                .steps
                .iter()
                .rev()
                .filter(|step| wanted(&step.compensation))
                .map(|step| step.output.event_type.clone())
                .collect::<Vec<_>>()
        };
        let acknowledgement = SagaCompensated {
            service: self.name().to_owned(),
            compensated: types_in(|state| *state == CompensationState::Compensated),
            failed: types_in(|state| matches!(state, CompensationState::Failed { .. })),
        };
        let reason = match record.status {
            SagaStatus::Aborted { reason } => reason,
            _ => AbortReason::Rejected,
        };
        info!(service = %self.name(), saga_id = %record.saga_id, %reason, compensated = ?acknowledgement.compensated, failed = ?acknowledgement.failed, "saga compensated");
        let mut ack = self.caused_by(
            &abort,
            SagaCompensated::TYPE,
            SagaKind::Compensated,
            to_raw(&acknowledgement)?,
        );
        let span = self.stamped_send_span(&mut ack);
        record.compensation_acknowledged = true;
        handling.mark_handled(&abort);
        handling.send(
            Outgoing {
                envelope: Arc::new(ack),
                kind: OutgoingKind::Event,
            },
            span,
        );
        self.commit(handling).await
    }

    /// Runs the compensation registered for `output`, with retries. One that keeps failing
    /// is reported `Failed`, to be dead-lettered with its reason.
    pub(super) async fn compensate(
        &self,
        output: &Envelope,
        abort: &Envelope,
        transaction: &Arc<TransactionSlot>,
    ) -> CompensationState {
        let Some(compensation) = self
            .definition()
            .compensations
            .get(output.event_type.as_str())
        else {
            return CompensationState::NotRequired;
        };
        let cx = Context::new(
            Arc::clone(&self.definition().name),
            output.saga_id,
            abort.id,
            output.event_type.clone(),
            Some(output.id),
            output.deadline,
            abort.trace.clone(),
            output.saga_data.clone(),
            Arc::clone(&self.definition().clock),
            Arc::clone(transaction),
        );
        let span = telemetry::compensation_span(self.name(), output);
        let result = self
            .retry(
                HandlerLabel::Compensation,
                &self.options().compensation_retry,
                None,
                transaction,
                |attempt| compensation.call(&output.data, cx.with_attempt(attempt)),
            )
            .instrument(span.clone())
            .await;
        self.metrics.compensated(result.is_ok());
        span.record(
            "compensation.result",
            if result.is_ok() {
                "compensated"
            } else {
                "failed"
            },
        );
        match result {
            Ok(()) => CompensationState::Compensated,
            Err(failure) => {
                let reason = format!(
                    "compensation of `{}` failed: {}",
                    output.event_type,
                    failure.describe()
                );
                error!(service = %self.name(), saga_id = %output.saga_id, %reason, "dead-lettering the compensation");
                self.metrics
                    .dead_lettered(DeadLetterReason::CompensationFailed);
                CompensationState::Failed { reason }
            }
        }
    }

    /// Records an abort of this service's own (`cause` is the event whose handling decided
    /// it; none for a deadline), to be published with the handling's commit.
    pub(super) fn record_abort(
        &self,
        handling: &mut Handling,
        cause: Option<&Envelope>,
        reason: AbortReason,
        detail: String,
    ) -> Result<(), Infrastructure> {
        let data = to_raw(&SagaAborted {
            reason,
            detail,
            service: self.name().to_owned(),
        })?;
        let Some(record) = handling.record_mut() else {
            return Ok(());
        };
        let mut abort = match cause {
            Some(cause) => self.caused_by(cause, SagaAborted::TYPE, SagaKind::Abort, data),
            None => self.envelope(
                record.saga_id,
                record.deadline,
                None,
                record.latest_trace(),
                record.saga_data(),
                SagaAborted::TYPE,
                SagaKind::Abort,
                data,
            ),
        };
        let span = self.stamped_send_span(&mut abort);
        record.abort_published = true;
        handling.send(
            Outgoing {
                envelope: Arc::new(abort),
                kind: OutgoingKind::Event,
            },
            span,
        );
        Ok(())
    }
}

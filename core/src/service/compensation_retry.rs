//! An operator's retry of failed compensations (`choreo.CompensationRetryRequested.v1`):
//! the service it names runs again, from its journal, every compensation of the aborted
//! saga that failed for good (rule 5), each committed at once as the first time, and
//! acknowledges anew with what it undid now and what still failed.

use std::sync::Arc;

use tracing::{debug, info, Span};

use super::handling::Handling;
use super::runtime::{to_raw, Infrastructure, Runtime, Settle};
use crate::control::CompensationRetryRequested;
use crate::envelope::{Envelope, SagaKind};
use crate::event::Event;
use crate::journal::CompensationState;
use crate::saga::SagaCompensated;
use crate::store::{Outgoing, OutgoingKind};

impl Runtime {
    /// Handles `request`, addressed to this service, in its saga's turn. The request is
    /// recorded as handled with the new acknowledgement, so a redelivery of it runs nothing
    /// again; a compensation that succeeded is committed before the next runs, so one
    /// interrupted midway and redelivered runs only those still failed.
    pub(super) async fn on_compensation_retry(
        &self,
        request: &Envelope,
    ) -> Result<Settle, Infrastructure> {
        let requested_by = serde_json::from_str::<CompensationRetryRequested>(request.data.get())
            .map(|retry| retry.requested_by)
            .unwrap_or_default();
        let loaded = self
            .store()
            .load(self.name(), request.saga_id, Some(request.id))
            .await?;
        if loaded.handled {
            debug!(service = %self.name(), event_id = %request.id, "duplicate delivery ignored");
            return Ok(Settle::Ack);
        }
        let ignored = |why: &str| {
            info!(service = %self.name(), saga_id = %request.saga_id, %requested_by, "compensation retry ignored: {why}");
            Ok(Settle::Ack)
        };
        let mut handling = Handling::new(request.saga_id, loaded.record, loaded.version);
        let Some(record) = handling.record() else {
            return ignored("this service has no record of the saga");
        };
        if !record.is_aborted() {
            return ignored("the saga is not aborted");
        }
        let Some(abort) = record.abort.clone() else {
            return ignored("the saga is not aborted");
        };
        if !record.compensation_acknowledged {
            return ignored("its compensation is still under way");
        }
        let failed: Vec<usize> = (0..record.steps.len())
            .rev()
            .filter(|position| {
                matches!(
                    record.steps[*position].compensation,
                    CompensationState::Failed { .. }
                )
            })
            .collect();
        if failed.is_empty() {
            return ignored("no compensation of the saga failed here");
        }
        info!(service = %self.name(), saga_id = %request.saga_id, %requested_by, failed = failed.len(), "retrying failed compensations");

        let mut undone = Vec::new();
        for position in failed {
            let Some(record) = handling.record() else {
                break;
            };
            let output = record.steps[position].output.clone();
            let transaction = self.transaction_slot();
            let state = self.compensate(&output, &abort, &transaction).await;
            match &state {
                CompensationState::Compensated => {
                    handling.join(transaction.take()?);
                    undone.push(output.event_type.clone());
                }
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
            if let Some(record) = handling.record_mut() {
                record.steps[position].compensation = state;
            }
            // Committed after each one, so a crash never repeats a finished compensation.
            self.commit(&mut handling).await?;
        }

        let Some(record) = handling.record() else {
            return Ok(Settle::Ack);
        };
        let acknowledgement = SagaCompensated {
            service: self.name().to_owned(),
            compensated: undone,
            failed: record
                .steps
                .iter()
                .rev()
                .filter(|step| matches!(step.compensation, CompensationState::Failed { .. }))
                .map(|step| step.output.event_type.clone())
                .collect(),
        };
        info!(service = %self.name(), saga_id = %request.saga_id, compensated = ?acknowledgement.compensated, failed = ?acknowledgement.failed, "failed compensations retried");
        // Caused by the request and on its trace; with the saga data of the saga.
        let mut ack = self.envelope(
            request.saga_id,
            record.deadline,
            Some(request.id),
            request.trace.clone(),
            abort.saga_data.clone(),
            SagaCompensated::TYPE,
            SagaKind::Compensated,
            to_raw(&acknowledgement)?,
        );
        let span = self.stamped_send_span(&mut ack);
        handling.mark_handled(request);
        handling.send(
            Outgoing {
                envelope: Arc::new(ack),
                kind: OutgoingKind::Event,
            },
            span,
        );
        self.commit(&mut handling).await?;
        Ok(Settle::Ack)
    }
}

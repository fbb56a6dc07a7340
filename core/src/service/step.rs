//! Rules 3, 4, 6, 8 and 10 for a step event: run the step unless the saga is aborted or out of
//! time, record it with the event it emits, and abort the saga on a rejection or a failure.

use std::sync::Arc;

use serde_json::value::RawValue;
use tracing::{debug, error, info, warn, Span};

use super::handling::Handling;
use super::runtime::{Failure, Infrastructure, Runtime, Settle};
use crate::envelope::{Envelope, SagaKind};
use crate::handler::{ErasedStep, Rejection, StepOutcome};
use crate::ids::EventId;
use crate::journal::{AbortReason, CompensationState, SagaRecord, SagaStatus, StepRecord};
use crate::store::{Outgoing, OutgoingKind};
use crate::telemetry::{DeadLetterReason, HandlerLabel, StepResultLabel};

impl Runtime {
    pub(super) async fn on_step(
        &self,
        envelope: &Envelope,
        step: &Arc<dyn ErasedStep>,
        handling: &mut Handling,
    ) -> Result<Settle, Infrastructure> {
        let record = handling.record_for(envelope);
        if record.is_aborted() {
            info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "step skipped: the saga was aborted");
            return Ok(Settle::Ack);
        }
        if envelope.deadline.has_passed(self.now()) {
            info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "step not started: the saga's deadline passed");
            keep_for_the_abort(record, envelope);
            self.arm_timer(record);
            handling.mark_handled(envelope);
            return Ok(Settle::Ack);
        }

        let joined;
        let mut joined_causes = Vec::new();
        let data: Vec<&RawValue> = if step.input_types().len() == 1 {
            vec![&envelope.data]
        } else {
            match Self::join_parts(step.input_types(), envelope, record) {
                Join::Ready(parts) => {
                    joined = parts;
                    joined_causes = joined
                        .iter()
                        .map(|(id, _)| *id)
                        .filter(|id| *id != envelope.id)
                        .collect();
                    joined.iter().map(|(_, data)| &**data).collect()
                }
                Join::Waiting => {
                    debug!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "join keeps the event and waits for its other events");
                    handling.mark_handled(envelope);
                    return Ok(Settle::Ack);
                }
                Join::HasOne => {
                    info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "event ignored: the join has one of this type already");
                    handling.mark_handled(envelope);
                    return Ok(Settle::Ack);
                }
            }
        };

        let transaction = self.transaction_slot();
        let cx = self.context(envelope, &transaction);
        let began = self.now();
        let outcome = self
            .retry(
                HandlerLabel::Step,
                &self.options().step_retry,
                Some(envelope.deadline),
                &transaction,
                |attempt| step.call(&data, cx.with_attempt(attempt)),
            )
            .await;
        let result = match &outcome {
            Ok(StepOutcome::Done(_)) => StepResultLabel::Done,
            Ok(StepOutcome::Reject(_)) => StepResultLabel::Rejected,
            Err(Failure::GaveUp(_)) => StepResultLabel::Failed,
            Err(Failure::OutOfTime(_)) => StepResultLabel::TimedOut,
        };
        self.metrics.step_finished(
            step.label(),
            result,
            self.now().duration_since(began).unwrap_or_default(),
        );
        // A held failure is not handled: a redrive of the event runs the step again.
        let held = self.options().hold_failed_steps && matches!(outcome, Err(Failure::GaveUp(_)));
        if !held {
            handling.mark_handled(envelope);
        }
        // A step that did its work, or refused it, commits what it wrote with the handling.
        if outcome.is_ok() {
            handling.join(transaction.take()?);
        }
        match outcome {
            Ok(StepOutcome::Done(None)) => {}
            Ok(StepOutcome::Done(Some((output_type, data)))) => {
                let kind = if self.saga().is_terminal(output_type) {
                    SagaKind::Complete
                } else {
                    SagaKind::Step
                };
                let mut output = self.caused_by(envelope, output_type, kind, data);
                output.joined_causes = joined_causes;
                let withheld = envelope.deadline.has_passed(self.now());
                let span = if withheld {
                    Span::none()
                } else {
                    self.stamped_send_span(&mut output)
                };
                let Some(record) = handling.record_mut() else {
                    unreachable!("made above")
                };
                let position = record.steps.len();
                let output = Arc::new(output);
                record.steps.push(StepRecord {
                    input: Some(envelope.id),
                    output: Arc::clone(&output),
                    withheld,
                    published: false,
                    compensation: CompensationState::Pending,
                });
                if withheld {
                    warn!(service = %self.name(), saga_id = %envelope.saga_id, event_type = output_type, "step finished past the deadline; its event is withheld and it will be compensated");
                    self.arm_timer(record);
                    return Ok(Settle::Ack);
                }
                if kind == SagaKind::Complete {
                    // Rule 7: committed with its terminal event, the saga is complete here;
                    // this service does not wait for the event to come back to it.
                    self.complete(handling);
                } else if record.status == SagaStatus::Active
                    && self.definition().compensations.contains_key(output_type)
                {
                    self.arm_timer(record);
                }
                handling.send(
                    Outgoing {
                        envelope: output,
                        kind: OutgoingKind::Step { position },
                    },
                    span,
                );
            }
            Ok(StepOutcome::Reject(Rejection { reason })) => {
                info!(service = %self.name(), saga_id = %envelope.saga_id, %reason, "step rejected; aborting the saga");
                self.record_abort(handling, Some(envelope), AbortReason::Rejected, reason)?;
            }
            Err(failure @ Failure::GaveUp(_)) if held => {
                let reason = super::redrive::naming_the_redrive(format!(
                    "step for `{}` failed: {}",
                    step.label(),
                    failure.describe()
                ));
                error!(service = %self.name(), saga_id = %envelope.saga_id, %reason, "dead-lettering the event; the saga waits for it to be redriven, or for its deadline");
                self.metrics.dead_lettered(DeadLetterReason::StepFailed);
                self.hold(envelope, step, handling);
                handling.send(
                    Outgoing {
                        envelope: Arc::new(envelope.clone()),
                        kind: OutgoingKind::DeadLetter { reason },
                    },
                    Span::none(),
                );
            }
            Err(failure @ Failure::GaveUp(_)) => {
                let reason = format!("step for `{}` failed: {}", step.label(), failure.describe());
                error!(service = %self.name(), saga_id = %envelope.saga_id, %reason, "dead-lettering the event and aborting the saga");
                self.metrics.dead_lettered(DeadLetterReason::StepFailed);
                self.record_abort(
                    handling,
                    Some(envelope),
                    AbortReason::DeadLettered,
                    reason.clone(),
                )?;
                handling.send(
                    Outgoing {
                        envelope: Arc::new(envelope.clone()),
                        kind: OutgoingKind::DeadLetter { reason },
                    },
                    Span::none(),
                );
            }
            Err(Failure::OutOfTime(error)) => {
                warn!(service = %self.name(), saga_id = %envelope.saga_id, %error, "deadline passed while retrying; the saga times out");
                if let Some(record) = handling.record_mut() {
                    keep_for_the_abort(record, envelope);
                    self.arm_timer(record);
                }
            }
        }
        Ok(Settle::Ack)
    }

    /// Holds the saga after the step for `envelope` failed for good
    /// ([`hold_failed_steps`](crate::ServiceOptions::hold_failed_steps)): it stays active,
    /// and this service's timer at its deadline aborts it unless a redrive completes the
    /// step first (rule 8). A join forgets the event it failed with, so that the redriven
    /// one completes it.
    fn hold(&self, envelope: &Envelope, step: &Arc<dyn ErasedStep>, handling: &mut Handling) {
        let Some(record) = handling.record_mut() else {
            return;
        };
        if step.input_types().len() > 1 {
            record
                .steps
                .retain(|kept| !(kept.is_received() && kept.output.id == envelope.id));
        }
        keep_for_the_abort(record, envelope);
        if record.status == SagaStatus::Active {
            self.arm_timer(record);
        }
    }

    /// Rule 10: keeps `envelope`, a part of a join of `types`, in the saga's record, and
    /// returns the id and data of every part, in `types`' order, once all arrived. Every
    /// received event of a part's type counts as that part: none of another kind gets this
    /// far.
    fn join_parts(types: &[&str], envelope: &Envelope, record: &mut SagaRecord) -> Join {
        let kept = |record: &SagaRecord, event_type: &str| {
            record
                .steps
                .iter()
                .find(|step| step.is_received() && step.output.event_type == event_type)
                .map(|step| (step.output.id, step.output.data.clone()))
        };
        if kept(record, &envelope.event_type).is_some() {
            return Join::HasOne;
        }
        record.steps.push(StepRecord::received(envelope.clone()));
        match types
            .iter()
            .map(|event_type| kept(record, event_type))
            .collect()
        {
            Some(parts) => Join::Ready(parts),
            None => Join::Waiting,
        }
    }
}

/// Where a join stands once an event of one of its types arrived.
enum Join {
    /// Every part arrived: their ids and data, in the join's order.
    Ready(Vec<(EventId, Box<RawValue>)>),
    /// The event is kept; others are missing.
    Waiting,
    /// The join has an event of this type already (the first counts, and the join runs
    /// once): this one is ignored.
    HasOne,
}

/// Keeps `envelope`, whose step did not run, in a record that holds nothing else, so that the
/// abort this service's timer fires carries the saga's data and trace (rule 2).
fn keep_for_the_abort(record: &mut SagaRecord, envelope: &Envelope) {
    if record.steps.is_empty() {
        record.steps.push(StepRecord::received(envelope.clone()));
    }
}

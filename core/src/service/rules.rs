//! The saga rules (DESIGN §4) as one service applies them to each event it receives.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::FutureExt;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument, Span};

use super::dispatch::{SagaQueues, Work};
use super::{Definition, ServiceOptions, StartError};
use crate::context::Context;
use crate::deadline::{Deadline, DeadlineTimers};
use crate::envelope::{Envelope, SagaKind};
use crate::error::{ErrorKind, HandlerError};
use crate::event::Event;
use crate::handler::{BoxFuture, ErasedStep, Rejection, StepOutcome};
use crate::ids::{EventId, SagaId};
use crate::journal::{
    AbortReason, CompensationState, SagaRecord, SagaStatus, StepRecord, StoreError,
};
use crate::retry::RetryPolicy;
use crate::saga::{Saga, SagaAborted, SagaCompensated};
use crate::telemetry::{self, DeadLetterReason, HandlerLabel, Metrics, StepResultLabel};
use crate::trace::TraceContext;
use crate::transport::{Delivery, PublishError, Subscription, Transport, TransportError};

/// A running service's shared state.
pub(crate) struct Runtime {
    definition: Definition,
    transport: Arc<dyn Transport>,
    timers: DeadlineTimers,
    queues: SagaQueues,
    stop: CancellationToken,
    kill: CancellationToken,
    metrics: Metrics,
}

/// What to do with a delivery once it was handled.
enum Settle {
    Ack,
    DeadLetter(String),
}

/// A failure of the broker or the store: the event is redelivered later.
#[derive(Debug, thiserror::Error)]
enum Infrastructure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("cannot encode a runtime event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How running a handler with retries ended, when it did not succeed.
enum Failure {
    /// Permanent, or transient on every attempt.
    GaveUp(HandlerError),
    /// The deadline passed between attempts.
    OutOfTime(HandlerError),
}

impl Runtime {
    pub(super) fn new(
        definition: Definition,
        transport: Arc<dyn Transport>,
        stop: CancellationToken,
        kill: CancellationToken,
    ) -> Self {
        let meter = definition.meter.clone().unwrap_or_else(|| {
            opentelemetry::global::meter_with_scope(
                opentelemetry::InstrumentationScope::builder(telemetry::TARGET)
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            )
        });
        let metrics = Metrics::new(&meter, &definition.name, definition.saga.topic());
        Self {
            metrics,
            definition,
            transport,
            timers: DeadlineTimers::default(),
            queues: SagaQueues::default(),
            stop,
            kill,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.definition.name
    }

    pub(super) fn saga(&self) -> &Saga {
        &self.definition.saga
    }

    pub(super) fn options(&self) -> &ServiceOptions {
        &self.definition.options
    }

    pub(super) fn now(&self) -> SystemTime {
        self.definition.clock.now()
    }

    pub(super) fn queues(&self) -> &SagaQueues {
        &self.queues
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    pub(super) async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    pub(super) async fn killed(&self) {
        self.kill.cancelled().await;
    }

    /// Pulls deliveries while permits last, until stopped.
    pub(super) async fn consume(
        self: Arc<Self>,
        mut subscription: Box<dyn Subscription>,
        permits: Arc<Semaphore>,
    ) {
        loop {
            let permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let delivery = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                delivery = subscription.next() => delivery,
            };
            match delivery {
                Ok(delivery) => self.accept(delivery, permit).await,
                Err(TransportError::Closed) => break,
                Err(error) => {
                    warn!(service = %self.name(), %error, "receiving failed; retrying");
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(self.options().redelivery_delay) => {}
                    }
                }
            }
        }
    }

    /// Decodes a delivery and queues it for its saga; a malformed one is dead-lettered at
    /// once, so it never blocks the events behind it.
    async fn accept(self: &Arc<Self>, delivery: Delivery, permit: OwnedSemaphorePermit) {
        match Envelope::decode(&delivery.message) {
            Ok(envelope)
                if !self.concerns(&envelope.event_type, envelope.kind == SagaKind::Abort) =>
            {
                // Not this service's business: acknowledged here, without a task or a span,
                // so a trace shows only the services that acted on each event. Decoded all
                // the same, so that every consumer group dead-letters a malformed event.
                drop(permit);
                if let Err(error) = delivery.ack().await {
                    warn!(service = %self.name(), event_id = %envelope.id, %error, "cannot settle delivery");
                }
            }
            Ok(envelope) => {
                let saga = envelope.saga_id;
                self.dispatch(
                    saga,
                    Work::Deliver {
                        envelope,
                        delivery,
                        permit,
                    },
                );
            }
            Err(error) => {
                let reason = format!("malformed event: {error}");
                warn!(service = %self.name(), topic = %delivery.topic, %reason, "dead-lettering");
                self.metrics.dead_lettered(DeadLetterReason::Malformed);
                if let Err(error) = delivery.dead_letter(&reason).await {
                    error!(service = %self.name(), %error, "cannot dead-letter a malformed event");
                }
            }
        }
    }

    /// Fires deadline timers into the sagas' queues, until stopped.
    pub(super) async fn fire_deadlines(self: Arc<Self>) {
        loop {
            let saga = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                saga = self.timers.next_due(&*self.definition.clock) => saga,
            };
            self.dispatch(saga, Work::DeadlinePassed);
        }
    }

    pub(super) async fn process(&self, saga: SagaId, work: Work) {
        match work {
            Work::DeadlinePassed => self.process_deadline(saga).await,
            Work::Deliver {
                envelope,
                delivery,
                permit,
            } => {
                let span = telemetry::process_span(
                    self.name(),
                    &*self.transport,
                    &delivery.topic,
                    &envelope,
                );
                self.settle(envelope, delivery).instrument(span).await;
                drop(permit);
            }
        }
    }

    /// Handles `envelope` and settles its delivery accordingly.
    async fn settle(&self, envelope: Envelope, delivery: Delivery) {
        let settled = match self.handle(&envelope).await {
            Ok(Settle::Ack) => delivery.ack().await,
            Ok(Settle::DeadLetter(reason)) => delivery.dead_letter(&reason).await,
            Err(error) => {
                warn!(
                    service = %self.name(), saga_id = %envelope.saga_id,
                    event_type = %envelope.event_type, %error,
                    "cannot handle now; the event will be redelivered"
                );
                tokio::time::sleep(self.options().redelivery_delay).await;
                delivery.nack().await
            }
        };
        if let Err(error) = settled {
            warn!(service = %self.name(), event_id = %envelope.id, %error, "cannot settle delivery");
        }
    }

    /// Whether the saga rules apply here to an event of `event_type`: an abort, a terminal
    /// event, or an event one of this service's steps handles.
    fn concerns(&self, event_type: &str, is_abort: bool) -> bool {
        is_abort
            || self.saga().is_terminal(event_type)
            || self.definition.steps.contains_key(event_type)
    }

    /// Applies the saga rules to one event this service is concerned with.
    async fn handle(&self, envelope: &Envelope) -> Result<Settle, Infrastructure> {
        let is_abort = envelope.kind == SagaKind::Abort;
        let is_terminal = self.saga().is_terminal(&envelope.event_type);
        let step = self.definition.steps.get(envelope.event_type.as_str());
        if self.definition.inbox.contains(envelope.id).await? {
            debug!(service = %self.name(), event_id = %envelope.id, "duplicate delivery ignored");
            return Ok(Settle::Ack);
        }
        let settle = if is_abort {
            self.on_abort(envelope).await?
        } else {
            let settle = match step {
                Some(step) => self.on_step(envelope, step).await?,
                None => Settle::Ack,
            };
            if is_terminal {
                self.on_complete(envelope).await?;
            }
            settle
        };
        self.definition.inbox.insert(envelope.id).await?;
        Ok(settle)
    }

    /// Rules 3, 4, 6 and 8: run a step unless the saga is aborted or out of time, record it,
    /// publish its event; reject and failure abort the saga.
    async fn on_step(
        &self,
        envelope: &Envelope,
        step: &Arc<dyn ErasedStep>,
    ) -> Result<Settle, Infrastructure> {
        let mut record = self.load_or_new(envelope).await?;
        if record.is_aborted() {
            info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "step skipped: the saga was aborted");
            return Ok(Settle::Ack);
        }
        if let Some(done) = record.step_for(envelope.id) {
            // Handled before a crash that lost the acknowledgement: publish the same event
            // again (same id, so consumers drop it if it did go out) instead of re-running.
            if !done.withheld {
                let span = self.send_span(&done.output);
                self.publish(done.output.clone(), span).await?;
            }
            return Ok(Settle::Ack);
        }
        if envelope.deadline.has_passed(self.now()) {
            info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "step not started: the saga's deadline passed");
            self.definition.journal.save(&record).await?;
            self.arm_timer(&record);
            return Ok(Settle::Ack);
        }

        let cx = self.context(envelope);
        let began = self.now();
        let outcome = self
            .retry(
                HandlerLabel::Step,
                &self.options().step_retry,
                Some(envelope.deadline),
                |attempt| step.call(&envelope.data, cx.with_attempt(attempt)),
            )
            .await;
        let result = match &outcome {
            Ok(StepOutcome::Done(_)) => StepResultLabel::Done,
            Ok(StepOutcome::Reject(_)) => StepResultLabel::Rejected,
            Err(Failure::GaveUp(_)) => StepResultLabel::Failed,
            Err(Failure::OutOfTime(_)) => StepResultLabel::TimedOut,
        };
        self.metrics.step_finished(
            &envelope.event_type,
            result,
            self.now().duration_since(began).unwrap_or_default(),
        );
        match outcome {
            Ok(StepOutcome::Done(None)) => Ok(Settle::Ack),
            Ok(StepOutcome::Done(Some(data))) => {
                let output_type = step.output_type().unwrap_or_default();
                let kind = if self.saga().is_terminal(output_type) {
                    SagaKind::Complete
                } else {
                    SagaKind::Step
                };
                let mut output = self.caused_by(envelope, output_type, kind, data);
                let withheld = envelope.deadline.has_passed(self.now());
                let span = if withheld {
                    Span::none()
                } else {
                    self.stamped_send_span(&mut output)
                };
                record.steps.push(StepRecord {
                    input: Some(envelope.id),
                    output: output.clone(),
                    withheld,
                    compensation: CompensationState::Pending,
                });
                self.definition.journal.save(&record).await?;
                if withheld {
                    warn!(service = %self.name(), saga_id = %envelope.saga_id, event_type = output_type, "step finished past the deadline; its event is withheld and it will be compensated");
                    self.arm_timer(&record);
                    return Ok(Settle::Ack);
                }
                if record.status == SagaStatus::Active
                    && self.definition.compensations.contains_key(output_type)
                {
                    self.arm_timer(&record);
                }
                self.publish(output, span).await?;
                Ok(Settle::Ack)
            }
            Ok(StepOutcome::Reject(Rejection { reason })) => {
                info!(service = %self.name(), saga_id = %envelope.saga_id, %reason, "step rejected; aborting the saga");
                self.publish_abort(&mut record, Some(envelope), AbortReason::Rejected, reason)
                    .await?;
                Ok(Settle::Ack)
            }
            Err(Failure::GaveUp(error)) => {
                let reason = format!("step for `{}` failed: {error}", envelope.event_type);
                error!(service = %self.name(), saga_id = %envelope.saga_id, %reason, "dead-lettering the event and aborting the saga");
                self.metrics.dead_lettered(DeadLetterReason::StepFailed);
                self.publish_abort(
                    &mut record,
                    Some(envelope),
                    AbortReason::DeadLettered,
                    reason.clone(),
                )
                .await?;
                Ok(Settle::DeadLetter(reason))
            }
            Err(Failure::OutOfTime(error)) => {
                warn!(service = %self.name(), saga_id = %envelope.saga_id, %error, "deadline passed while retrying; the saga times out");
                self.definition.journal.save(&record).await?;
                self.arm_timer(&record);
                Ok(Settle::Ack)
            }
        }
    }

    /// Rule 7: a terminal event completes the saga here and disarms its timer.
    async fn on_complete(&self, envelope: &Envelope) -> Result<(), Infrastructure> {
        let mut record = self.load_or_new(envelope).await?;
        if record.status == SagaStatus::Active {
            record.status = SagaStatus::Completed;
            self.timers.cancel(record.saga_id);
            self.definition.journal.save(&record).await?;
            self.saga_ended(&record, None);
        }
        Ok(())
    }

    /// Rule 5: compensate this service's completed steps, newest first, once; acknowledge.
    /// An abort that arrives before a step leaves the record aborted: a tombstone (rule 6).
    async fn on_abort(&self, envelope: &Envelope) -> Result<Settle, Infrastructure> {
        let aborted: SagaAborted = match serde_json::from_str(envelope.data.get()) {
            Ok(aborted) => aborted,
            Err(error) => {
                self.metrics.dead_lettered(DeadLetterReason::InvalidAbort);
                return Ok(Settle::DeadLetter(format!("invalid abort event: {error}")));
            }
        };
        let mut record = self.load_or_new(envelope).await?;
        if record.is_aborted() && record.compensation_acknowledged {
            return Ok(Settle::Ack);
        }
        if !record.is_aborted() {
            record.status = SagaStatus::Aborted {
                reason: aborted.reason,
            };
            self.timers.cancel(record.saga_id);
            self.definition.journal.save(&record).await?;
            self.saga_ended(&record, Some(aborted.reason));
        }

        for index in (0..record.steps.len()).rev() {
            if record.steps[index].compensation != CompensationState::Pending {
                continue;
            }
            let state = self
                .compensate(&record.steps[index].output, envelope)
                .await?;
            record.steps[index].compensation = state;
            // Saved after each one, so a crash never repeats a finished compensation.
            self.definition.journal.save(&record).await?;
        }

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
        info!(service = %self.name(), saga_id = %record.saga_id, reason = %aborted.reason, compensated = ?acknowledgement.compensated, failed = ?acknowledgement.failed, "saga compensated");
        let mut ack = self.caused_by(
            envelope,
            SagaCompensated::TYPE,
            SagaKind::Compensated,
            to_raw(&acknowledgement)?,
        );
        let span = self.stamped_send_span(&mut ack);
        self.publish(ack, span).await?;
        record.compensation_acknowledged = true;
        self.definition.journal.save(&record).await?;
        Ok(Settle::Ack)
    }

    /// Runs the compensation registered for `output`, with retries; one that keeps failing
    /// is dead-lettered with its reason.
    async fn compensate(
        &self,
        output: &Envelope,
        abort: &Envelope,
    ) -> Result<CompensationState, Infrastructure> {
        let Some(compensation) = self
            .definition
            .compensations
            .get(output.event_type.as_str())
        else {
            return Ok(CompensationState::NotRequired);
        };
        let cx = Context::new(
            Arc::clone(&self.definition.name),
            output.saga_id,
            abort.id,
            output.event_type.clone(),
            Some(output.id),
            output.deadline,
            abort.trace.clone(),
            Arc::clone(&self.definition.clock),
        );
        let span = telemetry::compensation_span(self.name(), output);
        let result = self
            .retry(
                HandlerLabel::Compensation,
                &self.options().compensation_retry,
                None,
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
            Ok(()) => Ok(CompensationState::Compensated),
            Err(Failure::GaveUp(error) | Failure::OutOfTime(error)) => {
                let reason = format!("compensation of `{}` failed: {error}", output.event_type);
                error!(service = %self.name(), saga_id = %output.saga_id, %reason, "dead-lettering the compensation");
                self.metrics
                    .dead_lettered(DeadLetterReason::CompensationFailed);
                self.transport
                    .dead_letter(self.saga().topic(), output.to_structured(), &reason)
                    .await?;
                Ok(CompensationState::Failed { reason })
            }
        }
    }

    /// Rule 8: the saga's timer fell due. Unless the saga ended meanwhile, publish the
    /// abort; like every other participant, this one compensates when the abort arrives.
    async fn process_deadline(&self, saga: SagaId) {
        if let Err(error) = self.on_deadline(saga).await {
            warn!(service = %self.name(), saga_id = %saga, %error, "cannot publish the timeout; retrying");
            self.timers
                .arm(saga, self.now() + self.options().redelivery_delay);
        }
    }

    async fn on_deadline(&self, saga: SagaId) -> Result<(), Infrastructure> {
        let Some(mut record) = self.definition.journal.load(saga).await? else {
            return Ok(());
        };
        if record.status != SagaStatus::Active || record.abort_published {
            return Ok(());
        }
        if !record.deadline.has_passed(self.now()) {
            self.arm_timer(&record);
            return Ok(());
        }
        let latest = record
            .steps
            .last()
            .map(|step| step.output.trace.clone())
            .unwrap_or_default();
        let root = record
            .steps
            .first()
            .filter(|_| record.initiated_here)
            .map(|start| &start.output.trace);
        let span = telemetry::deadline_span(self.name(), saga, &latest, root);
        async {
            info!(service = %self.name(), saga_id = %saga, deadline = %record.deadline, "deadline passed; aborting the saga");
            let detail = format!("deadline {} passed", record.deadline);
            self.publish_abort(&mut record, None, AbortReason::TimedOut, detail)
                .await
        }
        .instrument(span)
        .await
    }

    /// Arms the saga's deadline timer. The initiator fires at the deadline; the others a
    /// grace period after it (or after now, when they learn late that it passed), so that
    /// normally the initiator's abort arrives first and theirs is never sent.
    fn arm_timer(&self, record: &SagaRecord) {
        let mut at = record.deadline.instant().max(self.now());
        if !record.initiated_here {
            at += self.options().deadline_grace;
        }
        self.timers.arm(record.saga_id, at);
    }

    async fn publish_abort(
        &self,
        record: &mut SagaRecord,
        cause: Option<&Envelope>,
        reason: AbortReason,
        detail: String,
    ) -> Result<(), Infrastructure> {
        let data = to_raw(&SagaAborted {
            reason,
            detail,
            service: self.name().to_owned(),
        })?;
        let mut abort = match cause {
            Some(cause) => self.caused_by(cause, SagaAborted::TYPE, SagaKind::Abort, data),
            None => {
                let trace = record
                    .steps
                    .last()
                    .map(|step| step.output.trace.clone())
                    .unwrap_or_default();
                self.envelope(
                    record.saga_id,
                    record.deadline,
                    None,
                    trace,
                    SagaAborted::TYPE,
                    SagaKind::Abort,
                    data,
                )
            }
        };
        let span = self.stamped_send_span(&mut abort);
        self.publish(abort, span).await?;
        record.abort_published = true;
        self.definition.journal.save(record).await?;
        Ok(())
    }

    /// Rule 1: a saga starts with a new id and deadline, recorded here as this service's
    /// first step, so its compensation runs if the saga aborts.
    pub(super) async fn start<E: Event>(
        &self,
        event: E,
        now: SystemTime,
        deadline: Deadline,
    ) -> Result<SagaId, StartError> {
        if !self.definition.initiates.contains(E::TYPE) {
            return Err(StartError::NotInitiator {
                service: self.name().to_owned(),
                event_type: E::TYPE,
            });
        }
        let data =
            serde_json::value::to_raw_value(&event).map_err(|source| StartError::Serialize {
                event_type: E::TYPE,
                source,
            })?;
        let saga_id = SagaId::new();
        let mut start = self.envelope(
            saga_id,
            deadline,
            None,
            TraceContext::new_root(),
            E::TYPE,
            SagaKind::Start,
            data,
        );
        start.time = now;
        let span =
            telemetry::start_span(self.name(), &*self.transport, self.saga().topic(), &start);
        telemetry::stamp(&span, &mut start);
        let mut record = SagaRecord::new(saga_id, deadline);
        record.initiated_here = true;
        record.steps.push(StepRecord {
            input: None,
            output: start.clone(),
            withheld: false,
            compensation: CompensationState::Pending,
        });
        self.definition.journal.save(&record).await?;
        self.arm_timer(&record);
        self.metrics.saga_started();
        info!(parent: &span, service = %self.name(), %saga_id, event_type = E::TYPE, %deadline, "saga started");
        self.publish(start, span).await?;
        Ok(saga_id)
    }

    async fn load_or_new(&self, envelope: &Envelope) -> Result<SagaRecord, StoreError> {
        Ok(self
            .definition
            .journal
            .load(envelope.saga_id)
            .await?
            .unwrap_or_else(|| SagaRecord::new(envelope.saga_id, envelope.deadline)))
    }

    /// Publishes `envelope` inside `span`, its producer span.
    async fn publish(&self, envelope: Envelope, span: Span) -> Result<(), PublishError> {
        self.transport
            .publish(self.saga().topic(), envelope)
            .instrument(span)
            .await
    }

    /// The producer span of `envelope`, a child of the current span.
    fn send_span(&self, envelope: &Envelope) -> Span {
        telemetry::send_span(self.name(), &*self.transport, self.saga().topic(), envelope)
    }

    /// The producer span of a new `envelope`, whose context it then carries (rule 2 for the
    /// trace: consumers continue from this span).
    fn stamped_send_span(&self, envelope: &mut Envelope) -> Span {
        let span = self.send_span(envelope);
        telemetry::stamp(&span, envelope);
        span
    }

    /// At the initiator, records how its saga ended: on the span of the handling that
    /// decided it, as an event, and in the metrics. Other participants only follow.
    fn saga_ended(&self, record: &SagaRecord, aborted: Option<AbortReason>) {
        if !record.initiated_here {
            return;
        }
        let outcome = telemetry::outcome_label(aborted);
        let duration = record
            .steps
            .first()
            .and_then(|start| self.now().duration_since(start.output.time).ok())
            .unwrap_or_default();
        Span::current().record("saga.outcome", outcome);
        info!(
            target: telemetry::TARGET,
            service = %self.name(),
            saga.id = %record.saga_id,
            saga.outcome = outcome,
            saga.duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "saga ended"
        );
        self.metrics.saga_ended(outcome, duration);
    }

    /// Rule 2: an event caused by `cause` inherits its saga id, deadline and trace.
    fn caused_by(
        &self,
        cause: &Envelope,
        event_type: &str,
        kind: SagaKind,
        data: Box<RawValue>,
    ) -> Envelope {
        self.envelope(
            cause.saga_id,
            cause.deadline,
            Some(cause.id),
            cause.trace.clone(),
            event_type,
            kind,
            data,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        saga_id: SagaId,
        deadline: Deadline,
        causation_id: Option<EventId>,
        trace: TraceContext,
        event_type: &str,
        kind: SagaKind,
        data: Box<RawValue>,
    ) -> Envelope {
        Envelope {
            id: EventId::new(),
            source: self.name().to_owned(),
            event_type: event_type.to_owned(),
            time: self.now(),
            saga_id,
            causation_id,
            deadline,
            kind,
            trace,
            data,
        }
    }

    fn context(&self, envelope: &Envelope) -> Context {
        Context::new(
            Arc::clone(&self.definition.name),
            envelope.saga_id,
            envelope.id,
            envelope.event_type.clone(),
            envelope.causation_id,
            envelope.deadline,
            envelope.trace.clone(),
            Arc::clone(&self.definition.clock),
        )
    }

    /// Runs `attempt` until it succeeds, fails permanently, runs out of attempts or, for a
    /// step, the deadline passes. A panic counts as a permanent failure.
    async fn retry<T>(
        &self,
        handler: HandlerLabel,
        policy: &RetryPolicy,
        deadline: Option<Deadline>,
        mut attempt: impl FnMut(u32) -> BoxFuture<Result<T, HandlerError>>,
    ) -> Result<T, Failure> {
        let mut number = 1;
        loop {
            let (error, panicked) = match AssertUnwindSafe(attempt(number)).catch_unwind().await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => (error, false),
                Err(panic) => (
                    HandlerError::permanent(format!("panicked: {}", panic_message(&*panic))),
                    true,
                ),
            };
            let backoff = match error.kind() {
                ErrorKind::Permanent => None,
                _ => policy.backoff_after(number),
            };
            let kind = (!panicked).then(|| error.kind());
            self.metrics
                .handler_failed(handler, kind, backoff.is_some());
            if error.kind() == ErrorKind::Permanent {
                return Err(Failure::GaveUp(error));
            }
            let Some(wait) = backoff else {
                return Err(Failure::GaveUp(HandlerError::transient(format!(
                    "{error} (gave up after {number} attempts)"
                ))));
            };
            warn!(service = %self.name(), attempt = number, ?wait, %error, "retrying after a transient error");
            tokio::time::sleep(wait).await;
            if deadline.is_some_and(|deadline| deadline.has_passed(self.now())) {
                return Err(Failure::OutOfTime(error));
            }
            number += 1;
        }
    }
}

fn to_raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, Infrastructure> {
    Ok(serde_json::value::to_raw_value(value)?)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

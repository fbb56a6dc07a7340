//! A running service's shared state, and how a delivery becomes one handling: received,
//! decoded, deduplicated, handled by the saga rules (one module each), committed, settled.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::FutureExt;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{debug, error, info, warn, Instrument, Span};

use super::dispatch::{SagaQueues, Work};
use super::handling::Handling;
use super::outbox::Outbox;
use super::{Definition, ServiceOptions};
use crate::context::Context;
use crate::control::{self, Audience, CompensationRetryRequested, RedriveRequested};
use crate::deadline::{Deadline, DeadlineTimers};
use crate::envelope::{Envelope, SagaKind};
use crate::error::{ErrorKind, HandlerError};
use crate::event::Event;
use crate::handler::BoxFuture;
use crate::ids::{EventId, SagaId};
use crate::journal::{AbortReason, SagaRecord};
use crate::retry::RetryPolicy;
use crate::saga::{Saga, SagaAborted};
use crate::saga_data::SagaData;
use crate::store::{Store, StoreError, TransactionSlot};
use crate::telemetry::{self, DeadLetterReason, HandlerLabel, Metrics};
use crate::trace::TraceContext;
use crate::transport::{Delivery, PublishError, Subscription, Transport, TransportError};

/// How many times in a row a handling is made again after losing a race with another
/// instance (see [`Runtime::again_on_conflict`]).
const CONFLICT_ATTEMPTS: u32 = 8;

/// A running service's shared state.
pub(crate) struct Runtime {
    definition: Definition,
    transport: Arc<dyn Transport>,
    pub(super) timers: DeadlineTimers,
    queues: SagaQueues,
    outbox: Outbox,
    tokens: Tokens,
    pub(super) metrics: Metrics,
}

/// How a running service is told to stop.
#[derive(Clone, Default)]
pub(super) struct Tokens {
    /// Take no new work.
    pub(super) stop: CancellationToken,
    /// The workers have finished.
    pub(super) drained: CancellationToken,
}

/// What to do with a delivery once it was handled.
pub(super) enum Settle {
    Ack,
    DeadLetter(String),
}

/// A failure of the broker or the store: the event is handled again later.
#[derive(Debug, thiserror::Error)]
pub(super) enum Infrastructure {
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
pub(super) enum Failure {
    /// Permanent, or transient on every attempt: what went wrong, for people.
    GaveUp(String),
    /// The deadline passed between attempts.
    OutOfTime(HandlerError),
}

impl Failure {
    /// What went wrong, for people: the handler's error and why it was not tried again.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::GaveUp(detail) => detail.clone(),
            Self::OutOfTime(error) => {
                format!("{} (the deadline passed while retrying)", error.source())
            }
        }
    }
}

impl Definition {
    /// The event types the service acts on ([`Definition::concerns`]), to subscribe to: the
    /// inputs of its steps, the saga's terminal events it waits for, aborts and the
    /// operator's requests; `None` under the reverse compensation order, whose services see
    /// every event of the saga.
    pub(super) fn acted_on(&self) -> Option<Vec<String>> {
        if self.in_reverse() {
            return None;
        }
        let mut types: Vec<String> = self
            .steps
            .keys()
            .copied()
            .chain(
                self.saga
                    .terminal_types()
                    .into_iter()
                    .filter(|terminal| self.awaits_terminal(terminal)),
            )
            .chain([
                SagaAborted::TYPE,
                RedriveRequested::TYPE,
                CompensationRetryRequested::TYPE,
            ])
            .map(str::to_owned)
            .collect();
        types.sort_unstable();
        types.dedup();
        Some(types)
    }

    /// Whether this service acts on `envelope`: an operator's request that names it; of
    /// the saga's events, an abort, a terminal event it waits for, or an event one of its
    /// steps handles, and under the reverse compensation order, every one. Never a
    /// service's description. What it subscribes to ([`Definition::acted_on`]) must keep up
    /// with this.
    pub(super) fn concerns(&self, envelope: &Envelope) -> bool {
        match control::audience(envelope) {
            Audience::Nobody => false,
            Audience::Service(service) => service == *self.name,
            Audience::Saga => {
                envelope.kind == SagaKind::Abort
                    || self.in_reverse()
                    || (self.saga.is_terminal(&envelope.event_type)
                        && self.awaits_terminal(&envelope.event_type))
                    || self.steps.contains_key(envelope.event_type.as_str())
            }
        }
    }

    /// Whether a terminal event of `event_type` is to come back to this service: every one
    /// but those the saga says it alone emits (`Saga::completes_on_from`), which its steps
    /// emit in a commit that completes the saga (rule 7). A saga it starts with that event
    /// completes when the event comes back.
    fn awaits_terminal(&self, event_type: &str) -> bool {
        self.saga.sole_emitter(event_type) != Some(&*self.name)
            || self.initiates.contains(event_type)
    }
}

impl Runtime {
    pub(super) fn new(
        definition: Definition,
        transport: Arc<dyn Transport>,
        tokens: Tokens,
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
            outbox: Outbox::default(),
            tokens,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.definition.name
    }

    pub(super) fn definition(&self) -> &Definition {
        &self.definition
    }

    pub(super) fn saga(&self) -> &Saga {
        &self.definition.saga
    }

    pub(super) fn options(&self) -> &ServiceOptions {
        &self.definition.options
    }

    pub(super) fn store(&self) -> &Arc<dyn Store> {
        &self.definition.store
    }

    pub(super) fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub(super) fn now(&self) -> SystemTime {
        self.definition.clock.now()
    }

    pub(super) fn queues(&self) -> &SagaQueues {
        &self.queues
    }

    pub(super) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub(super) fn stopping(&self) -> bool {
        self.tokens.stop.is_cancelled()
    }

    // Cancellation futures, not `async fn`s: a task may poll one again after it completed.
    pub(super) fn stopped(&self) -> WaitForCancellationFuture<'_> {
        self.tokens.stop.cancelled()
    }

    pub(super) fn drained(&self) -> WaitForCancellationFuture<'_> {
        self.tokens.drained.cancelled()
    }

    /// Pulls deliveries while permits last, until stopped.
    pub(super) async fn consume(
        self: Arc<Self>,
        mut subscription: Box<dyn Subscription>,
        permits: Arc<Semaphore>,
    ) {
        // Made once and polled only when the consumer must wait, so the stop costs no
        // registration per delivery. A delivery taken is accepted to the end: a stop never
        // cuts short its acknowledgement or its dead-lettering.
        let mut stopped = pin!(self.stopped());
        loop {
            if self.stopping() {
                return;
            }
            let (permit, received) = tokio::select! {
                biased;
                received = receive(&mut subscription, &permits) => match received {
                    Some(received) => received,
                    None => return,
                },
                () = &mut stopped => return,
            };
            match received {
                Ok(delivery) => self.accept(delivery, permit).await,
                Err(TransportError::Closed) => return,
                Err(error) => {
                    warn!(service = %self.name(), %error, "receiving failed; retrying");
                    tokio::select! {
                        () = &mut stopped => return,
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
            Ok(envelope) if !self.concerns(&envelope) => {
                // Not this service's business: acknowledged here, without a task or a span,
                // so a trace shows only the services that acted on each event (under the
                // reverse compensation order, every event of the saga is). Decoded all the
                // same, so that every consumer group dead-letters a malformed event.
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
                let mut delivery = delivery;
                let reason = format!("malformed event: {error}");
                warn!(service = %self.name(), topic = %delivery.topic, %reason, "dead-lettering");
                self.metrics.dead_lettered(DeadLetterReason::Malformed);
                self.mark_dead_delivery(&mut delivery, None);
                if let Err(error) = delivery.dead_letter(&reason).await {
                    error!(service = %self.name(), %error, "cannot dead-letter a malformed event");
                }
            }
        }
    }

    pub(super) async fn process(&self, saga: SagaId, work: Work) {
        match work {
            Work::DeadlinePassed => self.process_deadline(saga).await,
            Work::Resume => self.process_resume(saga).await,
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
        let settled = match self.again_on_conflict(|| self.handle(&envelope)).await {
            Ok(Settle::Ack) => delivery.ack().await,
            Ok(Settle::DeadLetter(reason)) => {
                let mut delivery = delivery;
                self.mark_dead_delivery(&mut delivery, Some(envelope.saga_id));
                delivery.dead_letter(&reason).await
            }
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

    /// Whether this service acts on `envelope` ([`Definition::concerns`]).
    pub(super) fn concerns(&self, envelope: &Envelope) -> bool {
        self.definition.concerns(envelope)
    }

    /// Handles one event this service is concerned with: an operator's request, or an
    /// event of the saga.
    async fn handle(&self, envelope: &Envelope) -> Result<Settle, Infrastructure> {
        match envelope.event_type.as_str() {
            RedriveRequested::TYPE => self.on_redrive(envelope).await,
            CompensationRetryRequested::TYPE => self.on_compensation_retry(envelope).await,
            _ => self.handle_event(envelope).await,
        }
    }

    /// Applies the saga rules to one event of the saga, and commits what they changed as
    /// one store transaction.
    pub(super) async fn handle_event(&self, envelope: &Envelope) -> Result<Settle, Infrastructure> {
        let loaded = self
            .store()
            .load(self.name(), envelope.saga_id, Some(envelope.id))
            .await?;
        if loaded.handled {
            debug!(service = %self.name(), event_id = %envelope.id, "duplicate delivery ignored");
            return Ok(Settle::Ack);
        }
        if loaded.record.is_none() && self.past_retention(envelope.deadline) {
            // Its saga's record, if there ever was one, is purged: the event is far past
            // its deadline, so no rule could act on it anyway.
            info!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, "event ignored: its saga ended longer ago than the retention");
            return Ok(Settle::Ack);
        }
        let mut handling = Handling::new(envelope.saga_id, loaded.record, loaded.version);
        if envelope.kind == SagaKind::Abort {
            return self.on_abort(envelope, handling).await;
        }
        let mut settle = Settle::Ack;
        if let Some(step) = self.definition.steps.get(envelope.event_type.as_str()) {
            settle = self.on_step(envelope, step, &mut handling).await?;
        }
        if self.saga().is_terminal(&envelope.event_type) {
            self.on_complete(envelope, &mut handling);
        }
        if self.in_reverse() {
            self.keep_for_the_order(envelope, &mut handling).await?;
        }
        self.commit(&mut handling).await?;
        Ok(settle)
    }

    /// Runs `handling` again, from what the store holds now, while its commit loses a race
    /// with another instance's handling of the same saga (a shared store's conflict); after
    /// a few losses the error goes to the caller, to be tried later.
    pub(super) async fn again_on_conflict<T, Fut>(
        &self,
        mut handling: impl FnMut() -> Fut,
    ) -> Result<T, Infrastructure>
    where
        Fut: Future<Output = Result<T, Infrastructure>>,
    {
        let mut attempt = 1;
        loop {
            match handling().await {
                Err(Infrastructure::Store(error))
                    if error.is_conflict() && attempt < CONFLICT_ATTEMPTS =>
                {
                    debug!(service = %self.name(), %error, attempt, "another instance changed the saga meanwhile; handling again");
                    self.metrics.conflicted();
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Whether a saga with `deadline` is older than the retention: its records may be gone.
    fn past_retention(&self, deadline: Deadline) -> bool {
        deadline
            .instant()
            .checked_add(self.options().retention)
            .is_some_and(|horizon| horizon < self.now())
    }

    /// At the initiator, records how its saga ended: on the span of the handling that
    /// decided it, as an event, and in the metrics. Other participants only follow.
    pub(super) fn saga_ended(&self, record: &SagaRecord, aborted: Option<AbortReason>) {
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

    /// The producer span of `envelope`, a child of the current span.
    pub(super) fn send_span(&self, envelope: &Envelope) -> Span {
        telemetry::send_span(self.name(), &*self.transport, self.saga().topic(), envelope)
    }

    /// The producer span of a new `envelope`, whose context it then carries (rule 2 for the
    /// trace: consumers continue from this span).
    pub(super) fn stamped_send_span(&self, envelope: &mut Envelope) -> Span {
        telemetry::stamped_send_span(self.name(), &*self.transport, self.saga().topic(), envelope)
    }

    /// Rule 2: an event caused by `cause` inherits its saga id, deadline, trace and saga
    /// data.
    pub(super) fn caused_by(
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
            cause.saga_data.clone(),
            event_type,
            kind,
            data,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn envelope(
        &self,
        saga_id: SagaId,
        deadline: Deadline,
        causation_id: Option<EventId>,
        trace: TraceContext,
        saga_data: SagaData,
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
            joined_causes: Vec::new(),
            deadline,
            kind,
            trace,
            data,
            saga_data,
        }
    }

    /// The context of handling `envelope`, writing in `transaction`.
    pub(super) fn context(
        &self,
        envelope: &Envelope,
        transaction: &Arc<TransactionSlot>,
    ) -> Context {
        Context::new(
            Arc::clone(&self.definition.name),
            envelope.saga_id,
            envelope.id,
            envelope.event_type.clone(),
            envelope.causation_id,
            envelope.deadline,
            envelope.trace.clone(),
            envelope.saga_data.clone(),
            Arc::clone(&self.definition.clock),
            Arc::clone(transaction),
        )
    }

    /// A fresh transaction slot on the service's store.
    pub(super) fn transaction_slot(&self) -> Arc<TransactionSlot> {
        TransactionSlot::new(Arc::clone(self.store()))
    }

    /// Runs `attempt` until it succeeds, fails permanently, runs out of attempts or, for a
    /// step, the deadline passes. A panic counts as a permanent failure. What a failed
    /// attempt wrote in `transaction` is rolled back before the next.
    pub(super) async fn retry<T>(
        &self,
        handler: HandlerLabel,
        policy: &RetryPolicy,
        deadline: Option<Deadline>,
        transaction: &TransactionSlot,
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
            self.roll_back(transaction).await;
            let backoff = match error.kind() {
                ErrorKind::Permanent => None,
                _ => policy.backoff_after(number),
            };
            let kind = (!panicked).then(|| error.kind());
            self.metrics
                .handler_failed(handler, kind, backoff.is_some());
            if error.kind() == ErrorKind::Permanent {
                return Err(Failure::GaveUp(format!(
                    "{} (a permanent error)",
                    error.source()
                )));
            }
            let Some(wait) = backoff else {
                return Err(Failure::GaveUp(format!(
                    "{} (gave up after {number} attempts)",
                    error.source()
                )));
            };
            warn!(service = %self.name(), attempt = number, ?wait, %error, "retrying after a transient error");
            tokio::time::sleep(wait).await;
            if deadline.is_some_and(|deadline| deadline.has_passed(self.now())) {
                return Err(Failure::OutOfTime(error));
            }
            number += 1;
        }
    }

    /// Rolls back what a handler wrote in `transaction`, if it began one.
    pub(super) async fn roll_back(&self, transaction: &TransactionSlot) {
        match transaction.take() {
            Ok(Some(transaction)) => {
                if let Err(error) = transaction.rollback().await {
                    warn!(service = %self.name(), %error, "cannot roll back a handler's transaction");
                }
            }
            Ok(None) => {}
            // Rolled back when the guard goes.
            Err(error) => warn!(service = %self.name(), %error, "a handler kept its transaction"),
        }
    }
}

pub(super) fn to_raw<T: serde::Serialize>(value: &T) -> Result<Box<RawValue>, Infrastructure> {
    Ok(serde_json::value::to_raw_value(value)?)
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

/// A permit, then the next delivery; `None` once the permits are closed.
async fn receive(
    subscription: &mut Box<dyn Subscription>,
    permits: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, Result<Delivery, TransportError>)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    Some((permit, subscription.next().await))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::handler::Step;
    use crate::service::Service;

    #[derive(Serialize, Deserialize)]
    struct Paid {}
    impl Event for Paid {
        const TYPE: &'static str = "test.Paid.v1";
    }

    #[derive(Serialize, Deserialize)]
    struct Confirmed {}
    impl Event for Confirmed {
        const TYPE: &'static str = "test.Confirmed.v1";
    }

    fn saga() -> Saga {
        Saga::new("test.saga").completes_on_from::<Confirmed>("orders")
    }

    fn confirmed() -> Envelope {
        Envelope {
            id: EventId::new(),
            source: "orders".into(),
            event_type: Confirmed::TYPE.into(),
            time: SystemTime::UNIX_EPOCH,
            saga_id: SagaId::new(),
            causation_id: Some(EventId::new()),
            joined_causes: Vec::new(),
            deadline: Deadline::at(SystemTime::UNIX_EPOCH + Duration::from_secs(30)),
            kind: SagaKind::Complete,
            trace: TraceContext::new_root(),
            data: RawValue::from_string("{}".into()).unwrap(),
            saga_data: SagaData::default(),
        }
    }

    /// Whether `service` subscribes to the terminal event, and whether it acts on one.
    fn awaits_confirmed(service: &Service) -> (bool, bool) {
        let definition = &service.definition;
        let subscribed = definition
            .acted_on()
            .unwrap()
            .iter()
            .any(|event_type| event_type == Confirmed::TYPE);
        (subscribed, definition.concerns(&confirmed()))
    }

    #[test]
    fn a_terminal_event_is_awaited_by_all_but_its_declared_sole_emitter() {
        let confirm = |_: Paid, _: Context| async { Ok(Step::done(Confirmed {})) };
        let emitter = Service::builder("orders", &saga())
            .step(confirm)
            .build()
            .unwrap();
        assert_eq!(awaits_confirmed(&emitter), (false, false));

        let other = Service::builder("payments", &saga())
            .initiates::<Paid>()
            .build()
            .unwrap();
        assert_eq!(awaits_confirmed(&other), (true, true));

        // A saga it starts with the terminal event completes when the event comes back.
        let starter = Service::builder("orders", &saga())
            .initiates::<Confirmed>()
            .build()
            .unwrap();
        assert_eq!(awaits_confirmed(&starter), (true, true));
    }
}

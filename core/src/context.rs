//! What a handler knows about the event it handles and its saga.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::deadline::Deadline;
use crate::error::HandlerError;
use crate::ids::{EventId, SagaId};
use crate::saga_data::SagaData;
use crate::store::{TransactionGuard, TransactionSlot};
use crate::trace::TraceContext;

/// The saga context of one handling: ids, deadline, trace, clock and the handling's store
/// transaction. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
    attempt: u32,
}

struct ContextInner {
    service: Arc<str>,
    saga_id: SagaId,
    event_id: EventId,
    event_type: String,
    causation_id: Option<EventId>,
    deadline: Deadline,
    trace: TraceContext,
    saga_data: SagaData,
    clock: Arc<dyn Clock>,
    transaction: Arc<TransactionSlot>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        service: Arc<str>,
        saga_id: SagaId,
        event_id: EventId,
        event_type: String,
        causation_id: Option<EventId>,
        deadline: Deadline,
        trace: TraceContext,
        saga_data: SagaData,
        clock: Arc<dyn Clock>,
        transaction: Arc<TransactionSlot>,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                service,
                saga_id,
                event_id,
                event_type,
                causation_id,
                deadline,
                trace,
                saga_data,
                clock,
                transaction,
            }),
            attempt: 1,
        }
    }

    pub(crate) fn with_attempt(&self, attempt: u32) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            attempt,
        }
    }

    /// The service handling the event.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The saga the event belongs to.
    pub fn saga_id(&self) -> SagaId {
        self.inner.saga_id
    }

    /// The id of the event being handled (the `causationid` of whatever this handling emits).
    pub fn event_id(&self) -> EventId {
        self.inner.event_id
    }

    /// The type of the event being handled.
    pub fn event_type(&self) -> &str {
        &self.inner.event_type
    }

    /// The id of the event that caused the one being handled.
    pub fn causation_id(&self) -> Option<EventId> {
        self.inner.causation_id
    }

    /// The saga's deadline.
    pub fn deadline(&self) -> Deadline {
        self.inner.deadline
    }

    /// Time left before the deadline; zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.inner.deadline.remaining(self.now())
    }

    /// The current time, from the service's clock.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The W3C trace context the event carried.
    pub fn trace(&self) -> &TraceContext {
        &self.inner.trace
    }

    /// The values set when the saga started ([`SagaData`]), which every event of the saga
    /// carries: read one with `cx.saga_data().get::<T>("name")`.
    pub fn saga_data(&self) -> &SagaData {
        &self.inner.saga_data
    }

    /// Which attempt this is, from 1; above 1 after transient errors.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The handling's database transaction, begun on first use. What the handler writes in
    /// it commits together with the handling's journal entry and inbox record, or not at all
    /// (docs/stores.md). Store crates give it their own API: `cx.sqlite(..)` with the
    /// `sqlite` feature, `cx.postgres()` with `postgres`.
    ///
    /// With a store that has no transactions (`memory://`) this is a permanent error. The
    /// guard must be dropped before the handler returns; a failed attempt's writes are
    /// rolled back before the next one.
    pub async fn transaction(&self) -> Result<TransactionGuard, HandlerError> {
        self.inner.transaction.guard().await.map_err(|error| {
            if error.is_unsupported() {
                HandlerError::permanent(error)
            } else {
                HandlerError::transient(error)
            }
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("service", &self.inner.service)
            .field("saga_id", &self.inner.saga_id)
            .field("event_id", &self.inner.event_id)
            .field("event_type", &self.inner.event_type)
            .field("deadline", &self.inner.deadline)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

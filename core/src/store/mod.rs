//! Stores: where a service keeps its saga state, so that it survives a restart.
//!
//! A store holds, per service, the journal (one record per saga, with the steps the service
//! did), the inbox (ids of events it handled) and the outbox (what it must still send). The
//! runtime commits everything one handling of one event changed as one [`Commit`], in one
//! store transaction, together with the handler's own writes when the handler used the
//! handling's transaction ([`Context::transaction`](crate::Context::transaction)). Only then
//! does it publish, and once published it marks the events sent ([`Store::mark_sent`]).
//!
//! Stores are opened from a URL like transports: `memory://` ([`MemoryStore`], the default,
//! lost on restart), `sqlite://PATH` and `postgres://...` with their cargo features. Every row
//! is keyed by the service's name, so services may share one database.

mod changes;
mod memory;
mod transaction;
mod url;

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;

pub use self::changes::{SagaHeader, Snapshot};
pub use self::memory::MemoryStore;
pub(crate) use self::transaction::TransactionSlot;
pub use self::transaction::{StoreTransaction, TransactionGuard};
pub use self::url::{OpenStoreError, StoreUrl};

use crate::deadline::Deadline;
use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::ids::{EventId, SagaId};
use crate::journal::{CompensationState, SagaRecord, StepRecord};

/// A store failure. In a handling it returns the event to the broker, to be handled again.
#[derive(Debug, thiserror::Error)]
#[error("store failed: {source}")]
pub struct StoreError {
    #[source]
    source: BoxError,
    unsupported: bool,
}

impl StoreError {
    /// A store failure caused by `error`, worth trying again.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            unsupported: false,
        }
    }

    /// A request the store cannot serve at all, e.g. a transaction from a store without
    /// them: trying again cannot help.
    pub fn unsupported(what: impl Into<BoxError>) -> Self {
        Self {
            source: what.into(),
            unsupported: true,
        }
    }

    /// Whether trying again cannot help.
    pub fn is_unsupported(&self) -> bool {
        self.unsupported
    }
}

/// One service's saga state: journal, inbox and outbox.
///
/// The runtime serialises the handling of each saga inside a service, and commits each
/// handling's changes in one call, so an implementation needs only make each call atomic.
/// [`MemoryStore`] is the reference; `choreo::testkit::store_conformance` checks a store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's kind, e.g. `memory`, `sqlite`; used in logs.
    fn name(&self) -> &'static str;

    /// Whether saga state outlives the process.
    fn is_durable(&self) -> bool;

    /// The record of `saga` kept for `service`, and whether `event` (if given) was handled.
    async fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Result<Loaded, StoreError>;

    /// Opens a database transaction for a handler's own writes, committed with the
    /// handling's [`Commit`]. A store without transactions says so in its error.
    async fn begin(&self) -> Result<Box<dyn StoreTransaction>, StoreError>;

    /// Applies `commits` (usually one; several when a caller's transaction started several
    /// sagas) atomically: inside `transaction`, committing it, when the handler used one (a
    /// transaction this store began), on its own otherwise. On error nothing of them is
    /// applied, and `transaction` is rolled back.
    async fn commit(
        &self,
        commits: Vec<Commit>,
        transaction: Option<Box<dyn StoreTransaction>>,
    ) -> Result<(), StoreError>;

    /// Records that `sent` were published (or dead-lettered), so recovery does not send
    /// them again. Losing this write only means sending them once more.
    async fn mark_sent(&self, service: &str, sent: &[Sent]) -> Result<(), StoreError>;

    /// What `service` must pick up again when it starts.
    async fn recover(&self, service: &str) -> Result<Recovery, StoreError>;

    /// Deletes the records of finished sagas (completed, or aborted and acknowledged) whose
    /// deadline is before `before`, and inbox ids of events whose deadline is before it.
    async fn purge(&self, service: &str, before: SystemTime) -> Result<Purged, StoreError>;
}

/// What [`Store::load`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The saga's record, if the service has one.
    pub record: Option<SagaRecord>,
    /// Whether the event asked about is in the inbox.
    pub handled: bool,
}

/// Everything one handling changed, applied at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The service.
    pub service: String,
    /// The saga.
    pub saga_id: SagaId,
    /// Changes to the saga's record, in order.
    pub changes: Vec<JournalChange>,
    /// The event handled, for the inbox; `None` when no event was (a timer, a start).
    pub handled: Option<Handled>,
    /// Runtime events and dead letters the handling sends once committed, for the store's
    /// outbox. Step outputs are not here: their [`JournalChange::StepAdded`] holds them,
    /// unpublished until marked sent.
    pub outbox: Vec<Outgoing>,
}

impl Commit {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.handled.is_none() && self.outbox.is_empty()
    }
}

/// An event recorded in the inbox, with the deadline that bounds how long it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The event.
    pub event_id: EventId,
    /// Its saga's deadline.
    pub deadline: Deadline,
}

/// One change to a saga's record. Stores write only what each names.
// A handling's few changes live only until its commit; boxing the step would cost an
// allocation per step for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JournalChange {
    /// The service sees the saga for the first time; its steps follow as `StepAdded`.
    Created(SagaHeader),
    /// The saga's own fields changed.
    Updated(SagaHeader),
    /// A step was appended at `position`.
    StepAdded {
        /// Its index in the record's steps.
        position: usize,
        /// The step.
        step: StepRecord,
    },
    /// The compensation of the step at `position` changed.
    CompensationChanged {
        /// Its index in the record's steps.
        position: usize,
        /// The new state.
        state: CompensationState,
    },
}

/// Something a handling sends after its commit; kept in the store until marked sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The event.
    pub envelope: Envelope,
    /// Where it is kept and where it goes.
    pub kind: OutgoingKind,
}

/// Where an [`Outgoing`] event is kept and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutgoingKind {
    /// The output of the step at `position`, kept in the journal: published on the topic.
    Step {
        /// Its index in the record's steps.
        position: usize,
    },
    /// A runtime event (an abort, an acknowledgement), kept in the outbox: published on
    /// the topic.
    Event,
    /// A message for the topic's dead-letter destination, kept in the outbox.
    DeadLetter {
        /// Why it is dead-lettered.
        reason: String,
    },
}

impl Outgoing {
    /// The key that marks it sent.
    pub fn sent(&self) -> Sent {
        Sent {
            saga_id: self.envelope.saga_id,
            event_id: self.envelope.id,
            kind: match &self.kind {
                OutgoingKind::Step { position } => SentKind::Step {
                    position: *position,
                },
                OutgoingKind::Event => SentKind::Event,
                OutgoingKind::DeadLetter { .. } => SentKind::DeadLetter,
            },
        }
    }
}

/// Names an [`Outgoing`] that was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sent {
    /// Its saga.
    pub saga_id: SagaId,
    /// Its event.
    pub event_id: EventId,
    /// Which it was.
    pub kind: SentKind,
}

/// Which kind of [`Outgoing`] was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SentKind {
    /// A step output, at this position in the record's steps.
    Step {
        /// Its index in the record's steps.
        position: usize,
    },
    /// A runtime event.
    Event,
    /// A dead letter.
    DeadLetter,
}

/// What a service picks up again when it starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Active sagas whose abort this service has not published: their deadline timers.
    pub timers: Vec<ActiveSaga>,
    /// Aborted sagas whose compensation this service has not acknowledged.
    pub unfinished: Vec<SagaId>,
    /// Events recorded but not marked sent, oldest first per saga.
    pub unsent: Vec<Outgoing>,
}

/// An active saga whose deadline timer a service keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveSaga {
    /// The saga.
    pub saga_id: SagaId,
    /// Its deadline.
    pub deadline: Deadline,
    /// Whether this service started it.
    pub initiated_here: bool,
}

/// What [`Store::purge`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Saga records.
    pub sagas: u64,
    /// Inbox ids.
    pub handled: u64,
}

impl fmt::Display for Purged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} sagas, {} inbox ids", self.sagas, self.handled)
    }
}

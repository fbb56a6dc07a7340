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

use std::any::Any;
use std::fmt;
use std::sync::Arc;
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
    conflict: bool,
}

impl StoreError {
    /// A store failure caused by `error`, worth trying again.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Self {
            source: error.into(),
            unsupported: false,
            conflict: false,
        }
    }

    /// A request the store cannot serve at all, e.g. a transaction from a store without
    /// them: trying again cannot help.
    pub fn unsupported(what: impl Into<BoxError>) -> Self {
        Self {
            source: what.into(),
            unsupported: true,
            conflict: false,
        }
    }

    /// A commit refused because the saga's record changed since it was loaded: another
    /// instance of the service committed a handling of the same saga meanwhile. Nothing of
    /// it was applied; the handling is made again from what the store holds now.
    pub fn conflict(what: impl Into<BoxError>) -> Self {
        Self {
            source: what.into(),
            unsupported: false,
            conflict: true,
        }
    }

    /// Whether trying again cannot help.
    pub fn is_unsupported(&self) -> bool {
        self.unsupported
    }

    /// Whether the commit lost a race with another instance's ([`StoreError::conflict`]).
    pub fn is_conflict(&self) -> bool {
        self.conflict
    }
}

/// One service's saga state: journal, inbox and outbox.
///
/// The runtime serialises the handling of each saga inside a service, and commits each
/// handling's changes in one call, so an implementation needs only make each call atomic.
/// A store that several instances of a service may share ([`is_shared`](Self::is_shared))
/// also serialises them: it refuses a commit made from an outdated version of the record
/// ([`StoreError::conflict`]), and hands work a gone instance left behind to a live one
/// ([`claim`](Self::claim)).
/// [`MemoryStore`] is the reference; `choreo::testkit::store_conformance` checks a store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's kind, e.g. `memory`, `sqlite`; used in logs.
    fn name(&self) -> &'static str;

    /// Whether saga state outlives the process.
    fn is_durable(&self) -> bool;

    /// Whether several instances of one service may use the store at once: it checks each
    /// commit's [`Commit::version`] and implements [`claim`](Self::claim). A store that
    /// says no keeps one instance per service.
    fn is_shared(&self) -> bool {
        false
    }

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

    /// Reserves the store for one running instance of `service`, for as long as the
    /// returned guard lives (the runtime holds it while the service runs). A store that
    /// keeps one instance per service ([`is_shared`](Self::is_shared) false) but can be
    /// reached from several processes refuses a second one with a
    /// [conflict](StoreError::conflict) that says so. By default: nothing to reserve.
    async fn hold(&self, service: &str) -> Result<Box<dyn Any + Send + Sync>, StoreError> {
        let _ = service;
        Ok(Box::new(()))
    }

    /// What `service` must pick up again when it starts.
    async fn recover(&self, service: &str) -> Result<Recovery, StoreError>;

    /// Claims, for `claim.until`, what no instance of `service` took care of: active sagas
    /// whose deadline passed long ago with no abort recorded (their timer was in an instance
    /// that is gone), and events recorded long ago and still unsent. What another call
    /// claimed is not returned again until its claim runs out. Only shared stores need it.
    async fn claim(&self, service: &str, claim: &Claim) -> Result<Claimed, StoreError> {
        let _ = (service, claim);
        Ok(Claimed::default())
    }

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
    /// How many commits changed the record (0 without one): what a commit of changes made
    /// from this load gives as its [`Commit::version`].
    pub version: u64,
}

/// Everything one handling changed, applied at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The service.
    pub service: String,
    /// The saga.
    pub saga_id: SagaId,
    /// The record's version the handling was made from ([`Loaded::version`]; 0 when the
    /// service had no record). A commit that changes the record, or is made from a record
    /// (version above 0) even if it changes nothing in it, is checked: a shared store refuses
    /// it with [`StoreError::conflict`] if the record is no longer at this version, and counts
    /// one more once it applies. So a handling decided on a record another instance changed
    /// meanwhile never lands, not even its inbox entry or the handler's own writes.
    pub version: u64,
    /// Changes to the saga's record, in order.
    pub changes: Vec<JournalChange>,
    /// The event handled, for the inbox; `None` when no event was (a timer, a start).
    pub handled: Option<Handled>,
    /// Runtime events and dead letters the handling sends once committed, for the store's
    /// outbox. Step outputs are not here: their [`JournalChange::StepAdded`] holds them,
    /// unpublished until marked sent.
    pub outbox: Vec<Outgoing>,
    /// When the handling committed, by the service's clock: the time of the step outputs
    /// and outbox entries it records, which [`Claim::recorded_before`] is compared with (an
    /// event's own `time` may be much older: a dead letter is the event as it arrived).
    pub recorded: SystemTime,
}

impl Commit {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.handled.is_none() && self.outbox.is_empty()
    }

    /// Whether a shared store checks [`version`](Self::version) and counts one more.
    pub fn is_versioned(&self) -> bool {
        !self.changes.is_empty() || self.version > 0
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
    /// The event: that of a step is shared with the step's record.
    pub envelope: Arc<Envelope>,
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

/// What [`Store::claim`] looks for. Instants are the runtime's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Active sagas whose deadline is before this and whose abort the service has not
    /// recorded.
    pub deadlines_before: SystemTime,
    /// Unsent events recorded before this.
    pub recorded_before: SystemTime,
    /// The time now: claims that ran out before it may be taken again.
    pub now: SystemTime,
    /// Until when what is returned stays claimed.
    pub until: SystemTime,
    /// The most sagas, the most step outputs and the most outbox entries one call returns.
    pub limit: usize,
}

/// What [`Store::claim`] found and claimed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claimed {
    /// Overdue sagas, to be aborted.
    pub timers: Vec<ActiveSaga>,
    /// Unsent events, to be sent.
    pub unsent: Vec<Outgoing>,
}

impl Claimed {
    /// Whether nothing was claimed.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty() && self.unsent.is_empty()
    }
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

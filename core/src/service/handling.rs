//! One handling's changes to one saga: gathered while the rules run, committed at once, and
//! sent once committed.

use std::time::SystemTime;

use tracing::Span;

use super::runtime::{Infrastructure, Runtime};
use crate::envelope::Envelope;
use crate::ids::SagaId;
use crate::journal::{AbortReason, SagaRecord};
use crate::store::{Commit, Handled, Outgoing, OutgoingKind, Snapshot, StoreTransaction};

/// What one handling changed in its saga's record, recorded as handled, will send, and the
/// handler's transaction to commit it all in.
pub(super) struct Handling {
    saga_id: SagaId,
    /// What the store holds, as of the load or the last commit.
    stored: Option<Snapshot>,
    /// The stored record's version (see [`Commit::version`]).
    version: u64,
    record: Option<SagaRecord>,
    handled: Option<Handled>,
    outgoing: Vec<(Outgoing, Span)>,
    transaction: Option<Box<dyn StoreTransaction>>,
    /// How the saga ended here, reported once the commit is done.
    ended: Option<Option<AbortReason>>,
}

impl Handling {
    /// A handling of `saga`, whose record the store holds as `record`, at `version`.
    pub(super) fn new(saga_id: SagaId, record: Option<SagaRecord>, version: u64) -> Self {
        Self {
            saga_id,
            stored: record.as_ref().map(Snapshot::of),
            version,
            record,
            handled: None,
            outgoing: Vec::new(),
            transaction: None,
            ended: None,
        }
    }

    pub(super) fn record(&self) -> Option<&SagaRecord> {
        self.record.as_ref()
    }

    /// The record, made now (active, with `envelope`'s deadline) if the service had none.
    pub(super) fn record_for(&mut self, envelope: &Envelope) -> &mut SagaRecord {
        self.record
            .get_or_insert_with(|| SagaRecord::new(envelope.saga_id, envelope.deadline))
    }

    /// The record; `None` only before [`record_for`](Self::record_for) or a start.
    pub(super) fn record_mut(&mut self) -> Option<&mut SagaRecord> {
        self.record.as_mut()
    }

    /// Starts a record for a saga the service starts.
    pub(super) fn start(record: SagaRecord) -> Self {
        let mut handling = Self::new(record.saga_id, None, 0);
        handling.record = Some(record);
        handling
    }

    /// Records `envelope` as handled: a redelivery of it is then a duplicate.
    pub(super) fn mark_handled(&mut self, envelope: &Envelope) {
        self.handled = Some(Handled {
            event_id: envelope.id,
            deadline: envelope.deadline,
        });
    }

    /// Sends `outgoing`, inside its producer `span`, once the commit is done.
    pub(super) fn send(&mut self, outgoing: Outgoing, span: Span) {
        self.outgoing.push((outgoing, span));
    }

    /// A copy of what the handling will send once committed.
    pub(super) fn outgoing(&self) -> Vec<Outgoing> {
        self.outgoing
            .iter()
            .map(|(outgoing, _)| outgoing.clone())
            .collect()
    }

    /// Commits the handling in `transaction`, the handler's.
    pub(super) fn join(&mut self, transaction: Option<Box<dyn StoreTransaction>>) {
        if transaction.is_some() {
            self.transaction = transaction;
        }
    }

    /// Reports, once committed, that the saga ended here (`None`: completed).
    pub(super) fn ended(&mut self, aborted: Option<AbortReason>) {
        self.ended = Some(aborted);
    }

    /// The commit of what was gathered since the last one, and the transaction to make it
    /// in; `None` when there is nothing to commit.
    pub(super) fn prepare(
        &mut self,
        service: &str,
        now: SystemTime,
    ) -> Option<(Commit, Option<Box<dyn StoreTransaction>>)> {
        let changes = match &self.record {
            Some(record) => Snapshot::changes(self.stored.as_ref(), record),
            None => Vec::new(),
        };
        let commit = Commit {
            service: service.to_owned(),
            saga_id: self.saga_id,
            version: self.version,
            changes,
            handled: self.handled.take(),
            // Step outputs are in their journal entries already.
            outbox: self
                .outgoing
                .iter()
                .filter(|(outgoing, _)| !matches!(outgoing.kind, OutgoingKind::Step { .. }))
                .map(|(outgoing, _)| outgoing.clone())
                .collect(),
            recorded: now,
        };
        let transaction = self.transaction.take();
        (!commit.is_empty() || transaction.is_some()).then_some((commit, transaction))
    }
}

impl Runtime {
    /// Commits what `handling` gathered so far, then sends what it recorded for sending.
    /// On error nothing of it was committed, and nothing is sent.
    pub(super) async fn commit(&self, handling: &mut Handling) -> Result<(), Infrastructure> {
        if let Some((commit, transaction)) = handling.prepare(self.name(), self.now()) {
            let versioned = commit.is_versioned();
            if let Err(error) = self.store().commit(vec![commit], transaction).await {
                handling.outgoing.clear();
                if !error.is_conflict() {
                    // It may have committed all the same: then only the store knows what
                    // to send. (A conflict is known to have applied nothing.)
                    self.outbox().rescan();
                }
                return Err(error.into());
            }
            handling.version += u64::from(versioned);
        }
        self.committed(handling).await;
        Ok(())
    }

    /// What follows a commit of `handling`: the saga's end is reported and what it
    /// recorded for sending is sent.
    pub(super) async fn committed(&self, handling: &mut Handling) {
        handling.stored = handling.record.as_ref().map(Snapshot::of);
        if let (Some(aborted), Some(record)) = (handling.ended.take(), &handling.record) {
            self.saga_ended(record, aborted);
        }
        let outgoing = std::mem::take(&mut handling.outgoing);
        self.send(outgoing).await;
    }
}

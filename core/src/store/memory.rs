//! The in-memory store: the default, lost when the process ends.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::{
    ActiveSaga, Claim, Claimed, Commit, JournalChange, Loaded, Outgoing, OutgoingKind, Purged,
    Recovery, Sent, SentKind, Store, StoreError, StoreTransaction,
};
use crate::deadline::Deadline;
use crate::ids::{EventId, SagaId};
use crate::journal::{SagaRecord, SagaStatus};

/// Saga state in process memory, per service: what `memory://` opens.
///
/// Nothing survives the process, and an instance of a service in another process cannot
/// see this one's sagas; it has no database transaction for handlers to write in. For tests
/// and for services whose sagas may be lost with them. Instances of a service inside one
/// process may share one made with [`MemoryStore::shared`], as they would share a database.
#[derive(Debug, Default)]
pub struct MemoryStore {
    services: Mutex<HashMap<String, ServiceState>>,
    shared: bool,
}

#[derive(Debug, Default)]
struct ServiceState {
    records: HashMap<SagaId, Kept>,
    /// Until when each claimed saga or unsent event is claimed.
    claims: HashMap<ClaimOn, SystemTime>,
    /// When each unsent event was recorded.
    recorded: HashMap<Sent, SystemTime>,
    inbox: HashMap<EventId, Deadline>,
    /// Runtime events and dead letters not yet sent, in the order they were recorded.
    outbox: Vec<Outgoing>,
}

/// A saga's record, and how many commits changed it: kept together, since each needs the
/// other and an open saga holds one of each.
#[derive(Debug)]
struct Kept {
    record: SagaRecord,
    version: u64,
}

/// What a claim is on: an overdue saga, or an unsent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClaimOn {
    Saga(SagaId),
    Unsent(Sent),
}

impl MemoryStore {
    /// An empty store for one instance of each service.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that several instances of a service in this process share: each
    /// takes over what another left undone ([`Store::is_shared`]). Every memory store checks
    /// versions; only a shared one makes its services look for work to take over.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    /// A copy of `service`'s record of `saga`, for tests and inspection.
    pub fn record(&self, service: &str, saga: SagaId) -> Option<SagaRecord> {
        self.lock()
            .get(service)
            .and_then(|state| state.records.get(&saga))
            .map(|kept| kept.record.clone())
    }

    /// A copy of every record `service` keeps, for tests and inspection.
    pub fn records(&self, service: &str) -> Vec<SagaRecord> {
        self.lock()
            .get(service)
            .map(|state| {
                state
                    .records
                    .values()
                    .map(|kept| kept.record.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many handled event ids `service`'s inbox holds.
    pub fn inbox_len(&self, service: &str) -> usize {
        self.lock()
            .get(service)
            .map_or(0, |state| state.inbox.len())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ServiceState>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    async fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Result<Loaded, StoreError> {
        let services = self.lock();
        let state = services.get(service);
        let kept = state.and_then(|state| state.records.get(&saga));
        Ok(Loaded {
            record: kept.map(|kept| kept.record.clone()),
            handled: event
                .is_some_and(|event| state.is_some_and(|state| state.inbox.contains_key(&event))),
            version: kept.map_or(0, |kept| kept.version),
        })
    }

    async fn begin(&self) -> Result<Box<dyn StoreTransaction>, StoreError> {
        Err(StoreError::unsupported(
            "the memory store has no database transaction; open the service's store from a \
             `sqlite://` or `postgres://` URL to write business data in the handling's transaction",
        ))
    }

    async fn commit(
        &self,
        commits: Vec<Commit>,
        transaction: Option<Box<dyn StoreTransaction>>,
    ) -> Result<(), StoreError> {
        if transaction.is_some() {
            return Err(StoreError::unsupported(
                "the memory store cannot commit a transaction it did not begin",
            ));
        }
        let mut services = self.lock();
        // Checked first, so that a commit that cannot apply in full applies not at all.
        let mut versions: HashMap<(&str, SagaId), u64> = HashMap::new();
        let mut creating = HashSet::new();
        for commit in &commits {
            if !commit.is_versioned() {
                continue;
            }
            let key = (commit.service.as_str(), commit.saga_id);
            let state = services.get(&commit.service);
            let exists = creating.contains(&key)
                || state.is_some_and(|state| state.records.contains_key(&commit.saga_id));
            let version = versions.entry(key).or_insert_with(|| {
                state
                    .and_then(|state| state.records.get(&commit.saga_id))
                    .map_or(0, |kept| kept.version)
            });
            let created = commit
                .changes
                .iter()
                .any(|change| matches!(change, JournalChange::Created(_)));
            if created && exists {
                return Err(StoreError::conflict(format!(
                    "service `{}` already has a record of saga {}",
                    commit.service, commit.saga_id
                )));
            }
            if commit.version != *version {
                return Err(StoreError::conflict(format!(
                    "saga {} of `{}` is at version {version}, not {}: another instance changed it",
                    commit.saga_id, commit.service, commit.version
                )));
            }
            *version += 1;
            if created {
                creating.insert(key);
            }
        }
        for commit in commits {
            apply(services.entry(commit.service.clone()).or_default(), commit);
        }
        Ok(())
    }

    async fn mark_sent(&self, service: &str, sent: &[Sent]) -> Result<(), StoreError> {
        let mut services = self.lock();
        let Some(state) = services.get_mut(service) else {
            return Ok(());
        };
        for sent in sent {
            state.claims.remove(&ClaimOn::Unsent(*sent));
            state.recorded.remove(sent);
            match sent.kind {
                SentKind::Step { position } => {
                    if let Some(step) = state
                        .records
                        .get_mut(&sent.saga_id)
                        .and_then(|kept| kept.record.steps.get_mut(position))
                    {
                        step.published = true;
                    }
                }
                SentKind::Event | SentKind::DeadLetter => {
                    state.outbox.retain(|outgoing| outgoing.sent() != *sent);
                }
            }
        }
        Ok(())
    }

    async fn recover(&self, service: &str) -> Result<Recovery, StoreError> {
        let services = self.lock();
        let Some(state) = services.get(service) else {
            return Ok(Recovery::default());
        };
        let mut recovery = Recovery::default();
        for Kept { record, .. } in state.records.values() {
            recovery.timers.extend(timer(record));
            if record.is_aborted() && !record.compensation_acknowledged {
                recovery.unfinished.push(record.saga_id);
            }
            recovery.unsent.extend(unsent_steps(record));
        }
        recovery.unsent.extend(state.outbox.iter().cloned());
        Ok(recovery)
    }

    async fn claim(&self, service: &str, claim: &Claim) -> Result<Claimed, StoreError> {
        let mut services = self.lock();
        let Some(state) = services.get_mut(service) else {
            return Ok(Claimed::default());
        };
        let mut claimed = Claimed::default();
        let free = |claims: &HashMap<ClaimOn, SystemTime>, on: ClaimOn| {
            claims.get(&on).is_none_or(|until| *until < claim.now)
        };
        let mut overdue: Vec<ActiveSaga> = state
            .records
            .values()
            .filter_map(|kept| timer(&kept.record))
            .filter(|saga| {
                saga.deadline.instant() < claim.deadlines_before
                    && free(&state.claims, ClaimOn::Saga(saga.saga_id))
            })
            .collect();
        overdue.sort_by_key(|saga| (saga.deadline, saga.saga_id));
        overdue.truncate(claim.limit);
        claimed.timers = overdue;
        let steps = state
            .records
            .values()
            .flat_map(|kept| unsent_steps(&kept.record));
        let unclaimed = |outgoing: &Outgoing| {
            let recorded = state
                .recorded
                .get(&outgoing.sent())
                .copied()
                .unwrap_or(outgoing.envelope.time);
            recorded < claim.recorded_before
                && free(&state.claims, ClaimOn::Unsent(outgoing.sent()))
        };
        let mut steps: Vec<Outgoing> = steps.filter(|step| unclaimed(step)).collect();
        steps.sort_by_key(|step| step.envelope.id);
        claimed.unsent.extend(steps.into_iter().take(claim.limit));
        let outbox = state.outbox.iter().filter(|entry| unclaimed(entry));
        claimed.unsent.extend(outbox.take(claim.limit).cloned());
        let on = claimed
            .timers
            .iter()
            .map(|saga| ClaimOn::Saga(saga.saga_id))
            .chain(
                claimed
                    .unsent
                    .iter()
                    .map(|unsent| ClaimOn::Unsent(unsent.sent())),
            );
        let claims: Vec<ClaimOn> = on.collect();
        for on in claims {
            state.claims.insert(on, claim.until);
        }
        Ok(claimed)
    }

    async fn purge(&self, service: &str, before: SystemTime) -> Result<Purged, StoreError> {
        let mut services = self.lock();
        let Some(state) = services.get_mut(service) else {
            return Ok(Purged::default());
        };
        let (sagas, handled) = (state.records.len(), state.inbox.len());
        state.records.retain(|_, Kept { record, .. }| {
            !(record.is_finished() && record.deadline.instant() < before)
        });
        let records = &state.records;
        state.claims.retain(|on, _| match on {
            ClaimOn::Saga(saga) | ClaimOn::Unsent(Sent { saga_id: saga, .. }) => {
                records.contains_key(saga)
            }
        });
        state
            .recorded
            .retain(|sent, _| records.contains_key(&sent.saga_id));
        state
            .inbox
            .retain(|_, deadline| deadline.instant() >= before);
        Ok(Purged {
            sagas: (sagas - state.records.len()) as u64,
            handled: (handled - state.inbox.len()) as u64,
        })
    }
}

/// The timer of `record`'s saga, if it is active and the service recorded no abort of its own.
fn timer(record: &SagaRecord) -> Option<ActiveSaga> {
    (record.status == SagaStatus::Active && !record.abort_published).then_some(ActiveSaga {
        saga_id: record.saga_id,
        deadline: record.deadline,
        initiated_here: record.initiated_here,
    })
}

/// The step outputs of `record` neither published nor withheld.
fn unsent_steps(record: &SagaRecord) -> impl Iterator<Item = Outgoing> + '_ {
    record
        .steps
        .iter()
        .enumerate()
        .filter(|(_, step)| !step.published && !step.withheld)
        .map(|(position, step)| Outgoing {
            envelope: Arc::clone(&step.output),
            kind: OutgoingKind::Step { position },
        })
}

/// Applies one handling's changes to what `state` holds.
fn apply(state: &mut ServiceState, commit: Commit) {
    let versioned = commit.is_versioned();
    for change in &commit.changes {
        if let JournalChange::StepAdded { position, step } = change {
            let sent = Sent {
                saga_id: commit.saga_id,
                event_id: step.output.id,
                kind: SentKind::Step {
                    position: *position,
                },
            };
            state.recorded.insert(sent, commit.recorded);
        }
    }
    for outgoing in &commit.outbox {
        state.recorded.insert(outgoing.sent(), commit.recorded);
    }
    for change in commit.changes {
        match change {
            JournalChange::Created(header) => {
                let record = SagaRecord::from_header(header);
                state
                    .records
                    .insert(commit.saga_id, Kept { record, version: 0 });
            }
            change => {
                if let Some(kept) = state.records.get_mut(&commit.saga_id) {
                    kept.record.apply_owned(change);
                }
            }
        }
    }
    // A commit to a saga of which there is no record changes nothing to count.
    if versioned {
        if let Some(kept) = state.records.get_mut(&commit.saga_id) {
            kept.version += 1;
        }
    }
    if let Some(handled) = commit.handled {
        state.inbox.insert(handled.event_id, handled.deadline);
    }
    state.outbox.extend(commit.outbox);
}

//! The sagas in flight, as the store last wrote or read them.
//!
//! One process writes a SQLite file at a time, so what the store committed is what the file
//! holds: the record of a saga still running that this store created, and the ids of the
//! events handled for it, are answered from here; the file is read for any other. Only the
//! worker changes it, as its commits land. A saga that finishes is forgotten here; the file
//! keeps it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use choreo_core::journal::SagaRecord;
use choreo_core::store::{Commit, JournalChange, Loaded, Sent, SentKind};
use choreo_core::{EventId, SagaId};

#[derive(Default)]
pub(crate) struct Cache {
    services: Mutex<HashMap<String, HashMap<SagaId, Cached>>>,
}

struct Cached {
    record: SagaRecord,
    handled: HashSet<EventId>,
}

impl Cache {
    /// What the store holds of `saga`, if it is here.
    pub(crate) fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Option<Loaded> {
        let services = self.lock();
        let cached = services.get(service)?.get(&saga)?;
        Some(Loaded {
            record: Some(cached.record.clone()),
            handled: event.is_some_and(|event| cached.handled.contains(&event)),
        })
    }

    /// Applies what the file now holds after `commits`.
    pub(crate) fn committed(&self, commits: &[Commit]) {
        let mut services = self.lock();
        for commit in commits {
            let sagas = services.entry(commit.service.clone()).or_default();
            for change in &commit.changes {
                match change {
                    JournalChange::Created(header) => {
                        sagas.insert(
                            commit.saga_id,
                            Cached {
                                record: SagaRecord::from_header(header.clone()),
                                handled: HashSet::new(),
                            },
                        );
                    }
                    change => {
                        if let Some(cached) = sagas.get_mut(&commit.saga_id) {
                            cached.record.apply(change);
                        }
                    }
                }
            }
            let Some(cached) = sagas.get_mut(&commit.saga_id) else {
                continue;
            };
            if let Some(handled) = commit.handled {
                cached.handled.insert(handled.event_id);
            }
            if cached.record.is_finished() {
                sagas.remove(&commit.saga_id);
            }
        }
    }

    /// Marks step outputs published, as the file now does.
    pub(crate) fn sent(&self, service: &str, sent: &[Sent]) {
        let mut services = self.lock();
        let Some(sagas) = services.get_mut(service) else {
            return;
        };
        for sent in sent {
            if let SentKind::Step { position } = sent.kind {
                if let Some(step) = sagas
                    .get_mut(&sent.saga_id)
                    .and_then(|cached| cached.record.steps.get_mut(position))
                {
                    step.published = true;
                }
            }
        }
    }

    /// Forgets the sagas whose deadline is before `before`: a purge may have taken their
    /// inbox ids from the file.
    pub(crate) fn purged(&self, service: &str, before: SystemTime) {
        if let Some(sagas) = self.lock().get_mut(service) {
            sagas.retain(|_, cached| cached.record.deadline.instant() >= before);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<SagaId, Cached>>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

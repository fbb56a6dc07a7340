//! The sagas in flight, as the store last wrote or read them.
//!
//! One process writes a SQLite file at a time, so what the store committed is what the file
//! holds: the record of a saga still running that this store created, and the ids of the
//! events handled for it, are answered from here; the file is read for any other. Only the
//! worker changes it, as its commits land. A saga that finishes is forgotten here; the file
//! keeps it. What it does not hold, it may know the file does not hold either (see
//! [`Known`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use choreo_core::journal::SagaRecord;
use choreo_core::store::{Commit, JournalChange, Loaded, Sent, SentKind};
use choreo_core::{EventId, SagaId};

use crate::known::Known;
use crate::schema;

/// One service's sagas in flight.
type Sagas = HashMap<SagaId, Cached>;

pub(crate) struct Cache {
    services: Mutex<HashMap<String, Sagas>>,
    known: Known,
}

struct Cached {
    record: SagaRecord,
    /// A saga's handful of handled events: a list beats a set.
    handled: Vec<EventId>,
}

impl Cache {
    /// An empty cache of a file whose rows `known` names.
    pub(crate) fn new(known: Known) -> Self {
        Self {
            services: Mutex::default(),
            known,
        }
    }

    /// What the store holds of `saga`, if that is known without reading the file.
    pub(crate) fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Option<Loaded> {
        let services = self.lock();
        match services.get(service).and_then(|sagas| sagas.get(&saga)) {
            Some(cached) => Some(Loaded {
                record: Some(cached.record.clone()),
                handled: event.is_some_and(|event| cached.handled.contains(&event)),
                // One instance per service: no versions are kept.
                version: 0,
            }),
            None if !self.known.may_hold(service, saga) => Some(Loaded {
                record: None,
                handled: false,
                version: 0,
            }),
            None => None,
        }
    }

    /// Whether `saga` is here.
    pub(crate) fn holds(&self, service: &str, saga: SagaId) -> bool {
        self.lock()
            .get(service)
            .is_some_and(|sagas| sagas.contains_key(&saga))
    }

    /// The positions, separated by spaces, of the steps of `saga` whose output is still to
    /// be sent, if the saga is here.
    pub(crate) fn unsent(&self, service: &str, saga: SagaId) -> Option<String> {
        let services = self.lock();
        let cached = services.get(service)?.get(&saga)?;
        Some(schema::unsent_list(cached.record.steps.iter().enumerate()))
    }

    /// Notes, before they are written, that the file may now hold rows of the sagas of
    /// `commits`.
    pub(crate) fn writing(&self, commits: &[Commit]) {
        for commit in commits {
            self.known.insert(&commit.service, commit.saga_id);
        }
    }

    /// Applies what the file now holds after `commits`.
    pub(crate) fn committed(&self, commits: Vec<Commit>) {
        let mut services = self.lock();
        for commit in commits {
            let sagas = match services.get_mut(&commit.service) {
                Some(sagas) => sagas,
                None => services.entry(commit.service).or_default(),
            };
            for change in commit.changes {
                match change {
                    JournalChange::Created(header) => {
                        sagas.insert(
                            commit.saga_id,
                            Cached {
                                record: SagaRecord::from_header(header),
                                handled: Vec::new(),
                            },
                        );
                    }
                    change => {
                        if let Some(cached) = sagas.get_mut(&commit.saga_id) {
                            cached.record.apply_owned(change);
                        }
                    }
                }
            }
            let Some(cached) = sagas.get_mut(&commit.saga_id) else {
                continue;
            };
            if let Some(handled) = commit.handled {
                cached.handled.push(handled.event_id);
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Sagas>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

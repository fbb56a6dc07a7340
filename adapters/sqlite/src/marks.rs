//! Step outputs published but not yet marked so in the file.
//!
//! Marking an output sent rewrites its saga's row. The saga's next handling by the same
//! service rewrites that row anyway (the handling's event id goes there), so a mark waits for
//! it and is written with it: in a saga that runs to its end, every service marks its outputs
//! at no cost, except for the terminal event at the service that emits it (the saga is
//! complete there, so no handling follows). Marks still waiting after [`WAIT`], or more than
//! [`MAX_WAITING`] sagas' worth, are written on their own, as are those of a store that is
//! dropped or asked to recover.
//! Losing marks (the process dies first) only means sending those outputs once more after
//! the restart, which the store's contract allows: every receiver's inbox drops the copy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use choreo_core::store::{Sent, SentKind};
use choreo_core::SagaId;

/// The longest a mark waits for its saga's next handling.
const WAIT: Duration = Duration::from_secs(1);
/// The most sagas whose marks wait.
const MAX_WAITING: usize = 4_096;

#[derive(Default)]
pub(crate) struct Marks {
    /// Per service, per saga.
    waiting: HashMap<String, HashMap<SagaId, Vec<Sent>>>,
    /// How many sagas' marks wait.
    sagas: usize,
    /// Since when some mark waits.
    since: Option<Instant>,
}

impl Marks {
    /// Keeps the marks of step outputs in `sent` waiting; returns the others.
    pub(crate) fn add(&mut self, service: &str, sent: Vec<Sent>) -> Vec<Sent> {
        let (steps, others): (Vec<Sent>, Vec<Sent>) = sent
            .into_iter()
            .partition(|sent| matches!(sent.kind, SentKind::Step { .. }));
        if steps.is_empty() {
            return others;
        }
        let sagas = match self.waiting.get_mut(service) {
            Some(sagas) => sagas,
            None => self.waiting.entry(service.to_owned()).or_default(),
        };
        for sent in steps {
            let marks = sagas.entry(sent.saga_id).or_default();
            if marks.is_empty() {
                self.sagas += 1;
            }
            marks.push(sent);
        }
        self.since.get_or_insert_with(Instant::now);
        others
    }

    /// Whether marks of `saga` wait.
    pub(crate) fn waiting_for(&self, service: &str, saga: SagaId) -> bool {
        self.sagas > 0
            && self
                .waiting
                .get(service)
                .is_some_and(|sagas| sagas.contains_key(&saga))
    }

    /// Forgets the marks of `saga`: they were written with its row.
    pub(crate) fn written(&mut self, service: &str, saga: SagaId) {
        let removed = self
            .waiting
            .get_mut(service)
            .and_then(|sagas| sagas.remove(&saga));
        if removed.is_some() {
            self.sagas -= 1;
            if self.sagas == 0 {
                self.since = None;
            }
        }
    }

    /// Whether the marks should be written now, on their own.
    pub(crate) fn due(&self) -> bool {
        self.sagas > MAX_WAITING || self.since.is_some_and(|since| since.elapsed() >= WAIT)
    }

    /// Every waiting mark, per service, to be written on its own.
    pub(crate) fn take(&mut self) -> Vec<(String, Vec<Sent>)> {
        self.since = None;
        self.sagas = 0;
        self.waiting
            .drain()
            .map(|(service, sagas)| (service, sagas.into_values().flatten().collect()))
            .filter(|(_, sent): &(String, Vec<Sent>)| !sent.is_empty())
            .collect()
    }
}

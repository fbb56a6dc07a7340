//! Per-saga serialisation: events of one saga are handled one at a time, in arrival order,
//! while different sagas are handled concurrently.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::OwnedSemaphorePermit;

use super::rules::Runtime;
use crate::envelope::Envelope;
use crate::ids::SagaId;
use crate::transport::Delivery;

/// A unit of work for one saga.
// Nearly all work is deliveries; boxing them to shrink the rare timer variant would cost an
// allocation per event.
#[allow(clippy::large_enum_variant)]
pub(super) enum Work {
    /// An event to handle, holding one of the service's concurrency permits.
    Deliver {
        envelope: Envelope,
        delivery: Delivery,
        permit: OwnedSemaphorePermit,
    },
    /// The saga's deadline timer fell due.
    DeadlinePassed,
}

/// The queue of work waiting behind the work being done, per saga. A saga has an entry
/// exactly while a task is working on it.
#[derive(Default)]
pub(super) struct SagaQueues {
    queues: Mutex<HashMap<SagaId, VecDeque<Work>>>,
}

impl SagaQueues {
    /// Queues `work` behind the saga's running task, or hands it back when no task runs
    /// for the saga, in which case the caller becomes that task.
    fn enqueue(&self, saga: SagaId, work: Work) -> Option<Work> {
        match self.lock().entry(saga) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push_back(work);
                None
            }
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                Some(work)
            }
        }
    }

    /// The saga's next work; when there is none, the task ends and the entry goes.
    fn next(&self, saga: SagaId) -> Option<Work> {
        let mut queues = self.lock();
        let next = queues.get_mut(&saga).and_then(VecDeque::pop_front);
        if next.is_none() {
            queues.remove(&saga);
        }
        next
    }

    /// Ends the saga's task, returning its queued work (to be dropped unsettled).
    fn abandon(&self, saga: SagaId) -> Option<VecDeque<Work>> {
        self.lock().remove(&saga)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SagaId, VecDeque<Work>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runtime {
    /// Runs `work` after the saga's earlier work, on a task of its own if none runs yet.
    pub(super) fn dispatch(self: &Arc<Self>, saga: SagaId, work: Work) {
        if let Some(work) = self.queues().enqueue(saga, work) {
            let runtime = Arc::clone(self);
            self.tracker().spawn(runtime.drain(saga, work));
        }
    }

    async fn drain(self: Arc<Self>, saga: SagaId, mut work: Work) {
        loop {
            tokio::select! {
                biased;
                // A kill abandons the work in progress: its delivery is dropped unsettled.
                () = self.killed() => break,
                () = self.process(saga, work) => {}
            }
            if self.stopping() {
                break;
            }
            match self.queues().next(saga) {
                Some(next) => work = next,
                None => return,
            }
        }
        // Dropped unsettled, the queued deliveries are redelivered.
        drop(self.queues().abandon(saga));
    }
}

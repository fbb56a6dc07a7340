//! Per-saga serialisation: events of one saga are handled one at a time, in arrival order,
//! while different sagas are handled concurrently by a fixed set of workers (one per unit of
//! concurrency), so that handling an event never spawns a task.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foldhash::HashMap;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::runtime::Runtime;
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
    /// After a restart: the saga's compensation was left unfinished.
    Resume,
}

/// The queue of work waiting behind the work being done, per saga, and the sagas ready for
/// a worker. A saga has an entry exactly while it is ready or a worker is on it.
pub(super) struct SagaQueues {
    queues: Mutex<HashMap<SagaId, VecDeque<Work>>>,
    ready: mpsc::UnboundedSender<(SagaId, Work)>,
    /// Taken by one idle worker at a time; the others wait for the lock.
    ready_out: tokio::sync::Mutex<mpsc::UnboundedReceiver<(SagaId, Work)>>,
}

impl Default for SagaQueues {
    fn default() -> Self {
        let (ready, ready_out) = mpsc::unbounded_channel();
        Self {
            queues: Mutex::default(),
            ready,
            ready_out: tokio::sync::Mutex::new(ready_out),
        }
    }
}

impl SagaQueues {
    /// Queues `work` behind the saga's work in progress, or, when the saga has none, makes
    /// the saga ready for the next idle worker.
    fn enqueue(&self, saga: SagaId, work: Work) {
        match self.lock().entry(saga) {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(work),
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                // The receiver lives as long as `self`.
                let _ = self.ready.send((saga, work));
            }
        }
    }

    /// The next ready saga and its first work, once there is one.
    async fn next_ready(&self) -> Option<(SagaId, Work)> {
        self.ready_out.lock().await.recv().await
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

    /// Ends the saga's work, returning its queued work (to be dropped unsettled).
    fn abandon(&self, saga: SagaId) -> Option<VecDeque<Work>> {
        self.lock().remove(&saga)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SagaId, VecDeque<Work>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runtime {
    /// Runs `work` after the saga's earlier work.
    pub(super) fn dispatch(&self, saga: SagaId, work: Work) {
        self.queues().enqueue(saga, work);
    }

    /// One worker: takes a ready saga and works through its queue, then the next saga,
    /// until the service stops (after the work in hand) or is killed (at once).
    pub(super) async fn work(self: Arc<Self>) {
        loop {
            let next = tokio::select! {
                biased;
                () = self.killed() => return,
                () = self.stopped() => return,
                next = self.queues().next_ready() => next,
            };
            let Some((saga, mut work)) = next else { return };
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
                    None => break,
                }
            }
            if self.stopping() {
                // Dropped unsettled, the queued deliveries are redelivered.
                drop(self.queues().abandon(saga));
                return;
            }
        }
    }
}

//! Per-saga serialisation: events of one saga are handled one at a time, in arrival order,
//! while different sagas are handled concurrently by a fixed set of workers (one per unit of
//! concurrency), so that handling an event never spawns a task.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foldhash::HashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    queues: Mutex<Queues>,
    /// One permit per ready saga: a saga made ready wakes exactly one idle worker.
    ready: Semaphore,
}

impl Default for SagaQueues {
    fn default() -> Self {
        Self {
            queues: Mutex::default(),
            ready: Semaphore::new(0),
        }
    }
}

#[derive(Default)]
struct Queues {
    /// Per saga in hand, the work waiting behind what a worker is doing.
    waiting: HashMap<SagaId, VecDeque<Work>>,
    /// Sagas ready for a worker, with their first work, oldest first.
    ready: VecDeque<(SagaId, Work)>,
}

impl SagaQueues {
    /// Queues `work` behind the saga's work in progress, or, when the saga has none, makes
    /// the saga ready for the next idle worker.
    fn enqueue(&self, saga: SagaId, work: Work) {
        let mut queues = self.lock();
        match queues.waiting.entry(saga) {
            Entry::Occupied(mut queue) => queue.get_mut().push_back(work),
            Entry::Vacant(slot) => {
                slot.insert(VecDeque::new());
                queues.ready.push_back((saga, work));
                drop(queues);
                self.ready.add_permits(1);
            }
        }
    }

    /// The next ready saga and its first work, once there is one (always: each permit
    /// stands for one ready saga, and the semaphore is never closed). Cancel-safe.
    async fn next_ready(&self) -> Option<(SagaId, Work)> {
        if let Ok(permit) = self.ready.acquire().await {
            permit.forget();
        }
        self.lock().ready.pop_front()
    }

    /// The saga's next work; when there is none, the task ends and the entry goes.
    fn next(&self, saga: SagaId) -> Option<Work> {
        let mut queues = self.lock();
        let next = queues.waiting.get_mut(&saga).and_then(VecDeque::pop_front);
        if next.is_none() {
            queues.waiting.remove(&saga);
        }
        next
    }

    /// Ends the saga's work, returning its queued work (to be dropped unsettled).
    fn abandon(&self, saga: SagaId) -> Option<VecDeque<Work>> {
        self.lock().waiting.remove(&saga)
    }

    /// Drops every queued work (after the workers were aborted), unsettled.
    pub(super) fn clear(&self) {
        let queued = std::mem::take(&mut *self.lock());
        drop(queued);
    }

    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runtime {
    /// Runs `work` after the saga's earlier work.
    pub(super) fn dispatch(&self, saga: SagaId, work: Work) {
        self.queues().enqueue(saga, work);
    }

    /// One worker: takes a ready saga and works through its queue, then the next saga,
    /// until the service stops (after the work in hand). A kill aborts the task wherever it
    /// waits: the work in progress is dropped, its delivery unsettled.
    pub(super) async fn work(self: Arc<Self>) {
        // Made once and polled again at each select, so waiting for the stop costs no
        // registration per event.
        let mut stopped = pin!(self.stopped());
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stopped => return,
                next = self.queues().next_ready() => next,
            };
            let Some((saga, mut work)) = next else {
                continue;
            };
            loop {
                self.process(saga, work).await;
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<F: Future>(future: Pin<&mut F>, wakes: &Arc<Wakes>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(&Waker::from(Arc::clone(wakes))))
    }

    fn saga_of(ready: Poll<Option<(SagaId, Work)>>) -> Option<SagaId> {
        match ready {
            Poll::Ready(Some((saga, _))) => Some(saga),
            _ => None,
        }
    }

    #[test]
    fn a_ready_saga_wakes_one_idle_worker_and_its_later_work_waits_behind() {
        let queues = SagaQueues::default();
        let (first, second) = (SagaId::new(), SagaId::new());
        let (one_wakes, two_wakes) = (Arc::new(Wakes::default()), Arc::new(Wakes::default()));
        let mut one = pin!(queues.next_ready());
        let mut two = pin!(queues.next_ready());
        assert!(poll(one.as_mut(), &one_wakes).is_pending());
        assert!(poll(two.as_mut(), &two_wakes).is_pending());

        queues.enqueue(first, Work::Resume);
        queues.enqueue(first, Work::DeadlinePassed);
        assert_eq!(one_wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(saga_of(poll(one.as_mut(), &one_wakes)), Some(first));
        assert_eq!(
            two_wakes.0.load(Ordering::SeqCst),
            0,
            "one saga made ready wakes one worker, and its taking it wakes no other"
        );
        assert!(matches!(queues.next(first), Some(Work::DeadlinePassed)));

        queues.enqueue(second, Work::Resume);
        assert_eq!(two_wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(saga_of(poll(two.as_mut(), &two_wakes)), Some(second));
        assert!(queues.next(first).is_none(), "the saga's queue is done");
        assert!(queues.next(second).is_none());
        let queues = queues.lock();
        assert!(queues.waiting.is_empty() && queues.ready.is_empty());
    }
}

//! One consumer group's view of one topic: the messages it has yet to settle, handed out so
//! that a saga's messages are in flight one at a time and in order.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo_core::transport::KeyedQueue;
use choreo_core::RawMessage;
use foldhash::{HashSet, HashSetExt};
use tokio::sync::Notify;

use crate::chaos::Rng;

/// A message waiting in a group.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) message: Arc<RawMessage>,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) deliveries: u32,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) topic: String,
    /// The event types its members subscribed to; `None`: every type.
    types: Mutex<Option<HashSet<String>>>,
    queue: Mutex<KeyedQueue<Entry>>,
    pub(crate) ready: Notify,
}

impl Group {
    pub(crate) fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            types: Mutex::new(Some(HashSet::new())),
            queue: Mutex::new(KeyedQueue::new()),
            ready: Notify::new(),
        }
    }

    /// A member joined for `types` (`None`: every type). As bindings on a broker, what the
    /// group receives only grows.
    pub(crate) fn receive(&self, types: Option<&[String]>) {
        let mut received = self.types.lock().unwrap_or_else(PoisonError::into_inner);
        match (received.as_mut(), types) {
            (Some(received), Some(types)) => received.extend(types.iter().cloned()),
            (_, None) => *received = None,
            (None, Some(_)) => {}
        }
    }

    /// Whether a message of `event_type` comes to the group; a message with no type to
    /// route by (a raw one, a dead letter) comes to every group.
    pub(crate) fn takes(&self, event_type: Option<&str>) -> bool {
        let received = self.types.lock().unwrap_or_else(PoisonError::into_inner);
        match (received.as_ref(), event_type) {
            (Some(types), Some(event_type)) => types.contains(event_type),
            _ => true,
        }
    }

    pub(crate) fn push(&self, entry: Entry) {
        self.lock().push(entry.key.clone(), entry);
        self.ready.notify_waiters();
    }

    /// The next message to hand out: the oldest whose key has nothing in flight, or with
    /// `reorder`, any waiting message.
    pub(crate) fn pop(&self, reorder: Option<&mut Rng>) -> Option<Entry> {
        let mut queue = self.lock();
        let (_, mut entry) = match reorder {
            Some(rng) => {
                let index = rng.below(queue.waiting());
                queue.pop_any(index)?
            }
            None => queue.pop()?,
        };
        entry.deliveries += 1;
        Some(entry)
    }

    /// The message was settled: its key may move on.
    pub(crate) fn settle(&self, entry: &Entry) {
        self.lock().settle(entry.key.as_ref());
        self.ready.notify_waiters();
    }

    /// The message goes back to be delivered again, before the later ones of its key.
    pub(crate) fn requeue(&self, entry: Entry) {
        self.lock().requeue(entry.key.clone(), entry);
        self.ready.notify_waiters();
    }

    /// Messages not yet settled, handed out or not.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending()
    }

    fn lock(&self) -> MutexGuard<'_, KeyedQueue<Entry>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

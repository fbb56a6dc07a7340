//! One consumer group's view of one topic: the messages it has yet to settle, handed out so
//! that a saga's messages are in flight one at a time and in order.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use choreo_core::transport::KeyedQueue;
use choreo_core::{Envelope, RawMessage, SagaId};
use foldhash::{HashSet, HashSetExt};
use tokio::sync::Notify;

use crate::chaos::Rng;

/// A published message, shared by the groups that receive it.
#[derive(Debug)]
pub(crate) enum Message {
    /// An event, as its publisher keeps it (a saga's record holds the same one), encoded
    /// when a group first hands it out. Until then a queue holds only a pointer to it; from
    /// then on, the encoded form too, until every group has settled it.
    Event {
        envelope: Arc<Envelope>,
        encoded: OnceLock<Arc<RawMessage>>,
    },
    /// A message published encoded: a raw one, a dead letter.
    Encoded(Arc<RawMessage>),
}

impl Message {
    pub(crate) fn event(envelope: Arc<Envelope>) -> Self {
        Self::Event {
            envelope,
            encoded: OnceLock::new(),
        }
    }

    /// The message as consumers receive it: an event is encoded once, for every group.
    pub(crate) fn encoded(&self) -> Arc<RawMessage> {
        match self {
            Self::Event { envelope, encoded } => {
                Arc::clone(encoded.get_or_init(|| Arc::new(envelope.to_binary())))
            }
            Self::Encoded(message) => Arc::clone(message),
        }
    }
}

/// A message handed out by a group, or on its way to one.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) message: Arc<Message>,
    pub(crate) key: Option<Key>,
    pub(crate) deliveries: u32,
}

/// What orders a group's messages: an event's saga, or the key a raw message was published
/// with. A saga id is kept as one, not as text, since every event in a queue has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Saga(SagaId),
    Text(Arc<str>),
}

impl Key {
    /// The key of a raw message: the saga it names, if it names one, so that it keeps its
    /// place among that saga's events.
    pub(crate) fn of(key: &str) -> Self {
        key.parse()
            .map_or_else(|_| Self::Text(Arc::from(key)), Self::Saga)
    }
}

/// A message as its group's queue keeps it: the key lives beside it in the queue.
#[derive(Debug)]
struct Waiting {
    message: Arc<Message>,
    deliveries: u32,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) topic: String,
    /// The event types its members subscribed to; `None`: every type.
    types: Mutex<Option<HashSet<String>>>,
    queue: Mutex<KeyedQueue<Waiting, Key>>,
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
        let (key, waiting) = entry.split();
        self.lock().push(key, waiting);
        self.ready.notify_waiters();
    }

    /// The next message to hand out: the oldest whose key has nothing in flight, or with
    /// `reorder`, any waiting message.
    pub(crate) fn pop(&self, reorder: Option<&mut Rng>) -> Option<Entry> {
        let mut queue = self.lock();
        let (key, waiting) = match reorder {
            Some(rng) => {
                let index = rng.below(queue.waiting());
                queue.pop_any(index)?
            }
            None => queue.pop()?,
        };
        Some(Entry {
            message: waiting.message,
            key,
            deliveries: waiting.deliveries + 1,
        })
    }

    /// The message was settled: its key may move on, waking the members only when a
    /// message waited behind it.
    pub(crate) fn settle(&self, entry: &Entry) {
        if self.lock().settle(entry.key.as_ref()) {
            self.ready.notify_waiters();
        }
    }

    /// The message goes back to be delivered again, before the later ones of its key.
    pub(crate) fn requeue(&self, entry: Entry) {
        let (key, waiting) = entry.split();
        self.lock().requeue(key, waiting);
        self.ready.notify_waiters();
    }

    /// Messages not yet settled, handed out or not.
    pub(crate) fn pending(&self) -> usize {
        self.lock().pending()
    }

    fn lock(&self) -> MutexGuard<'_, KeyedQueue<Waiting, Key>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entry {
    fn split(self) -> (Option<Key>, Waiting) {
        let waiting = Waiting {
            message: self.message,
            deliveries: self.deliveries,
        };
        (self.key, waiting)
    }
}

//! A queue that hands out messages so that those sharing a key (a saga id) are in flight one
//! at a time and in order, while messages of other keys go ahead: the per-saga order every
//! transport owes the runtime (docs/concepts.md, rule 9).

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use tokio::sync::Notify;

/// Messages waiting to be handed out, with their keys: by default a broker's message key; a
/// transport that knows its keys are saga ids may key by something smaller to copy.
#[derive(Debug)]
pub struct KeyedQueue<T, K = Arc<str>> {
    /// Messages that may be handed out, oldest first.
    ready: VecDeque<(Option<K>, T)>,
    /// Messages waiting for an earlier one of the same key to be settled.
    blocked: HashMap<K, VecDeque<T>>,
    /// Keys with a message handed out and not settled.
    in_flight: HashSet<K>,
    /// Messages handed out and not settled.
    unsettled: usize,
}

impl<T, K> Default for KeyedQueue<T, K> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            blocked: HashMap::new(),
            in_flight: HashSet::new(),
            unsettled: 0,
        }
    }
}

impl<T, K: Clone + Eq + Hash> KeyedQueue<T, K> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message at the back.
    pub fn push(&mut self, key: Option<K>, item: T) {
        self.ready.push_back((key, item));
    }

    /// Hands out the oldest message whose key has nothing in flight.
    pub fn pop(&mut self) -> Option<(Option<K>, T)> {
        loop {
            let (key, item) = self.ready.pop_front()?;
            match &key {
                Some(k) if self.in_flight.contains(k) => {
                    self.blocked.entry(k.clone()).or_default().push_back(item);
                }
                Some(k) => {
                    self.in_flight.insert(k.clone());
                    self.unsettled += 1;
                    return Some((key, item));
                }
                None => {
                    self.unsettled += 1;
                    return Some((key, item));
                }
            }
        }
    }

    /// Hands out the `index`-th waiting message, whatever its key: for deliberately
    /// misbehaving test transports. `index` is taken modulo [`waiting`](Self::waiting).
    pub fn pop_any(&mut self, index: usize) -> Option<(Option<K>, T)> {
        let waiting = self.waiting();
        if waiting == 0 {
            return None;
        }
        let mut index = index % waiting;
        let taken = if index < self.ready.len() {
            self.ready.remove(index)?
        } else {
            index -= self.ready.len();
            let key = self.blocked.iter().find_map(|(key, queue)| {
                if index < queue.len() {
                    Some(key.clone())
                } else {
                    index -= queue.len();
                    None
                }
            })?;
            let queue = self.blocked.get_mut(&key)?;
            let item = queue.remove(index)?;
            if queue.is_empty() {
                self.blocked.remove(&key);
            }
            (Some(key), item)
        };
        self.unsettled += 1;
        Some(taken)
    }

    /// A handed-out message was settled: the next one of its key may go. Returns whether
    /// one did, i.e. whether a consumer waiting for a message should look again.
    pub fn settle(&mut self, key: Option<&K>) -> bool {
        self.unsettled = self.unsettled.saturating_sub(1);
        let Some(key) = key else { return false };
        self.in_flight.remove(key);
        let Some(queue) = self.blocked.get_mut(key) else {
            return false;
        };
        let next = queue.pop_front();
        if queue.is_empty() {
            self.blocked.remove(key);
        }
        match next {
            Some(next) => {
                self.ready.push_front((Some(key.clone()), next));
                true
            }
            None => false,
        }
    }

    /// A handed-out message comes back, to be handed out again before the later ones of its
    /// key.
    pub fn requeue(&mut self, key: Option<K>, item: T) {
        self.unsettled = self.unsettled.saturating_sub(1);
        if let Some(k) = &key {
            self.in_flight.remove(k);
        }
        self.ready.push_front((key, item));
    }

    /// Drops waiting messages for which `keep` is false (e.g. of a revoked partition).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.ready.retain(|(_, item)| keep(item));
        self.blocked.retain(|_, queue| {
            queue.retain(|item| keep(item));
            !queue.is_empty()
        });
    }

    /// Messages waiting to be handed out.
    pub fn waiting(&self) -> usize {
        self.ready.len() + self.blocked.values().map(VecDeque::len).sum::<usize>()
    }

    /// Messages waiting or handed out and not settled.
    pub fn pending(&self) -> usize {
        self.waiting() + self.unsettled
    }
}

/// A [`KeyedQueue`] shared between the task that fills it (a broker client) and the
/// subscription that waits on it.
#[derive(Debug)]
pub struct SharedKeyedQueue<T> {
    queue: Mutex<KeyedQueue<T>>,
    ready: Notify,
}

impl<T> Default for SharedKeyedQueue<T> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(KeyedQueue::new()),
            ready: Notify::new(),
        }
    }
}

impl<T> SharedKeyedQueue<T> {
    /// Changes the queue and wakes the waiting subscription, which looks again.
    pub fn update<R>(&self, change: impl FnOnce(&mut KeyedQueue<T>) -> R) -> R {
        let result = change(&mut self.lock());
        self.ready.notify_waiters();
        result
    }

    /// [`KeyedQueue::settle`]s a handed-out message, waking the waiting subscription only
    /// when a message became ready.
    pub fn settle(&self, key: Option<&Arc<str>>) {
        if self.lock().settle(key) {
            self.ready.notify_waiters();
        }
    }

    /// Messages waiting to be handed out.
    pub fn waiting(&self) -> usize {
        self.lock().waiting()
    }

    /// Waits for the next message [`KeyedQueue::pop`] hands out; `None` once `closed` holds
    /// when it looks. Cancel-safe.
    pub async fn pop(&self, closed: impl Fn() -> bool) -> Option<(Option<Arc<str>>, T)> {
        loop {
            if closed() {
                return None;
            }
            let ready = self.ready.notified();
            tokio::pin!(ready);
            // Registered before looking, so a message pushed in between wakes it.
            ready.as_mut().enable();
            if let Some(next) = self.lock().pop() {
                return Some(next);
            }
            ready.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, KeyedQueue<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Option<Arc<str>> {
        Some(Arc::from(k))
    }

    #[test]
    fn one_message_per_key_in_flight_in_order_while_other_keys_go_ahead() {
        let mut queue = KeyedQueue::new();
        queue.push(key("a"), 1);
        queue.push(key("a"), 2);
        queue.push(key("b"), 3);
        queue.push(None, 4);

        assert_eq!(queue.pop(), Some((key("a"), 1)));
        assert_eq!(queue.pop(), Some((key("b"), 3)));
        assert_eq!(queue.pop(), Some((None, 4)));
        assert_eq!(queue.pop(), None, "2 waits for 1");
        assert_eq!(queue.pending(), 4);

        queue.requeue(key("a"), 1);
        assert_eq!(
            queue.pop(),
            Some((key("a"), 1)),
            "a requeued message keeps its place"
        );
        assert!(queue.settle(key("a").as_ref()), "2 became ready");
        assert_eq!(queue.pop(), Some((key("a"), 2)));
        assert!(!queue.settle(key("a").as_ref()), "nothing waited behind 2");
        assert!(!queue.settle(key("b").as_ref()));
        assert!(!queue.settle(None));
        assert_eq!(queue.pending(), 0);
    }

    #[test]
    fn retain_drops_waiting_messages_only() {
        let mut queue = KeyedQueue::new();
        queue.push(key("a"), 1);
        queue.push(key("a"), 2);
        queue.push(key("b"), 3);
        assert_eq!(queue.pop(), Some((key("a"), 1)));
        assert_eq!(queue.pop(), Some((key("b"), 3)));
        queue.retain(|n| *n != 2);
        assert_eq!(queue.waiting(), 0);
        assert_eq!(queue.pending(), 2);
    }

    #[test]
    fn pop_any_takes_blocked_messages_too() {
        let mut queue = KeyedQueue::new();
        queue.push(key("a"), 1);
        queue.push(key("a"), 2);
        assert_eq!(queue.pop(), Some((key("a"), 1)));
        assert_eq!(queue.pop(), None);
        assert_eq!(queue.pop_any(0), Some((key("a"), 2)));
    }
}

//! One consumer group's view of one topic: the messages it has yet to settle, handed out so
//! that a saga's messages are in flight one at a time and in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use choreo_core::RawMessage;
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
    state: Mutex<GroupState>,
    pub(crate) ready: Notify,
}

#[derive(Debug, Default)]
struct GroupState {
    /// Messages that may be handed out, oldest first.
    ready: VecDeque<Entry>,
    /// Messages waiting for an earlier one of the same key to be settled.
    blocked: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Keys with a message handed out and not settled.
    in_flight: HashSet<Arc<str>>,
    /// Messages handed out and not settled.
    unsettled: usize,
}

impl Group {
    pub(crate) fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            state: Mutex::new(GroupState::default()),
            ready: Notify::new(),
        }
    }

    pub(crate) fn push(&self, entry: Entry) {
        self.lock().ready.push_back(entry);
        self.ready.notify_waiters();
    }

    /// The next message to hand out: the oldest whose key has nothing in flight, or with
    /// `reorder`, any pending message.
    pub(crate) fn pop(&self, reorder: Option<&mut Rng>) -> Option<Entry> {
        let mut state = self.lock();
        let mut entry = match reorder {
            Some(rng) => {
                let state = &mut *state;
                let pending =
                    state.ready.len() + state.blocked.values().map(VecDeque::len).sum::<usize>();
                if pending == 0 {
                    return None;
                }
                let index = rng.below(pending);
                if index < state.ready.len() {
                    state.ready.remove(index)?
                } else {
                    let mut index = index - state.ready.len();
                    let key = state.blocked.iter().find_map(|(key, queue)| {
                        if index < queue.len() {
                            Some(Arc::clone(key))
                        } else {
                            index -= queue.len();
                            None
                        }
                    })?;
                    let queue = state.blocked.get_mut(&key)?;
                    let entry = queue.remove(index)?;
                    if queue.is_empty() {
                        state.blocked.remove(&key);
                    }
                    entry
                }
            }
            None => loop {
                let entry = state.ready.pop_front()?;
                match &entry.key {
                    Some(key) if state.in_flight.contains(key) => {
                        state
                            .blocked
                            .entry(Arc::clone(key))
                            .or_default()
                            .push_back(entry);
                    }
                    Some(key) => {
                        state.in_flight.insert(Arc::clone(key));
                        break entry;
                    }
                    None => break entry,
                }
            },
        };
        state.unsettled += 1;
        entry.deliveries += 1;
        Some(entry)
    }

    /// The message was settled: its key may move on.
    pub(crate) fn settle(&self, entry: &Entry) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.unsettled -= 1;
        if let Some(key) = &entry.key {
            state.in_flight.remove(key);
            if let Some(queue) = state.blocked.get_mut(key) {
                if let Some(next) = queue.pop_front() {
                    state.ready.push_front(next);
                }
                if queue.is_empty() {
                    state.blocked.remove(key);
                }
            }
        }
        drop(guard);
        self.ready.notify_waiters();
    }

    /// The message goes back to be delivered again, before the later ones of its key.
    pub(crate) fn requeue(&self, entry: Entry) {
        let mut state = self.lock();
        state.unsettled -= 1;
        if let Some(key) = &entry.key {
            state.in_flight.remove(key);
        }
        state.ready.push_front(entry);
        drop(state);
        self.ready.notify_waiters();
    }

    /// Messages not yet settled, handed out or not.
    pub(crate) fn pending(&self) -> usize {
        let state = self.lock();
        state.ready.len()
            + state.blocked.values().map(VecDeque::len).sum::<usize>()
            + state.unsettled
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

//! The in-memory transport of choreo: topics, consumer groups and dead letters inside one
//! process, with the same delivery guarantees as a broker.
//!
//! - Every consumer group receives every message published after the group was created;
//!   members of one group compete for them. A group joined for some event types only
//!   ([`Transport::subscribe_to_types`]) receives the events of those types and every raw
//!   message, as a RabbitMQ queue bound by type does.
//! - At-least-once: a message is delivered again until it is acked; one nacked, or dropped
//!   unsettled (a consumer that crashed), is redelivered.
//! - Per-saga order: within a group, the messages of one saga are delivered one at a time, in
//!   publish order (the message key is the saga id, as on Kafka).
//! - Dead letters of topic `t` go to topic `t.dlq` with their reason, and are kept for
//!   inspection ([`MemoryTransport::dead_letters`]).
//! - Messages travel encoded (CloudEvents binary mode), so decoding is exercised as on a broker.
//!   An event is encoded when a group first hands it out, once for all groups: until then a
//!   group's queue holds only the publisher's event (which a saga's record keeps anyway),
//!   afterwards the encoded form too, until every group has settled it.
//!
//! [`Chaos`] makes it duplicate and reorder deliveries on purpose, for property tests.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod chaos;
mod group;

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use choreo_core::transport::{
    dead_letter_message, dead_letter_topic, observer_group, publish_through_shared, Acknowledge,
};
use choreo_core::{
    Delivery, Envelope, PublishError, RawMessage, Subscription, Transport, TransportError,
};
use foldhash::HashMap;
use tokio::sync::Notify;

pub use crate::chaos::Chaos;
use crate::chaos::Rng;
use crate::group::{Entry, Group, Key, Message};

/// An in-process broker. Clones share it.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    bus: Arc<Bus>,
}

#[derive(Default)]
struct Bus {
    state: Mutex<BusState>,
    closed: AtomicBool,
    closing: Notify,
    chaos: Option<(Chaos, Mutex<Rng>)>,
}

#[derive(Default)]
struct BusState {
    /// topic -> group name -> group
    groups: HashMap<String, HashMap<String, Arc<Group>>>,
    dead_letters: HashMap<String, Vec<DeadLetter>>,
}

/// A message that was dead-lettered, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The topic it was consumed from.
    pub topic: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The message as it was received.
    pub message: RawMessage,
}

impl MemoryTransport {
    /// A new, empty broker of its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new broker that misbehaves as `chaos` says.
    pub fn with_chaos(chaos: Chaos) -> Self {
        let rng = Mutex::new(Rng::new(chaos.seed));
        Self {
            bus: Arc::new(Bus {
                chaos: Some((chaos, rng)),
                ..Bus::default()
            }),
        }
    }

    /// The process-wide broker called `name`: every `memory://NAME` URL (and `memory://` for
    /// the empty name) in one process reaches the same one, as services reach one Kafka.
    pub fn shared(name: &str) -> Self {
        static SHARED: OnceLock<Mutex<HashMap<String, MemoryTransport>>> = OnceLock::new();
        let mut shared = SHARED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shared.entry(name.to_owned()).or_default().clone()
    }

    /// Publishes an already encoded message, e.g. a malformed one in a test, to every group
    /// of `topic`, whatever types it subscribed to. `key` orders messages like a saga id does;
    /// a key that is a saga id puts the message in line with that saga's events.
    pub fn publish_raw(
        &self,
        topic: &str,
        key: Option<&str>,
        message: RawMessage,
    ) -> Result<(), TransportError> {
        let message = Message::Encoded(Arc::new(message));
        self.bus.publish(topic, key.map(Key::of), None, message)
    }

    /// Messages dead-lettered from `topic` so far, oldest first.
    pub fn dead_letters(&self, topic: &str) -> Vec<DeadLetter> {
        self.bus
            .lock()
            .dead_letters
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    /// Messages of `topic` that group `group` has not acked yet, delivered or not.
    pub fn pending(&self, topic: &str, group: &str) -> usize {
        self.bus
            .lock()
            .groups
            .get(topic)
            .and_then(|groups| groups.get(group))
            .map_or(0, |group| group.pending())
    }

    /// Closes the broker: subscriptions end with [`TransportError::Closed`] and publishing
    /// fails.
    pub fn close(&self) {
        self.bus.closed.store(true, Ordering::SeqCst);
        self.bus.closing.notify_waiters();
    }
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.bus.lock();
        let mut topics: Vec<_> = state.groups.keys().collect();
        topics.sort_unstable();
        f.debug_struct("MemoryTransport")
            .field("topics", &topics)
            .field("chaos", &self.bus.chaos.as_ref().map(|(chaos, _)| chaos))
            .finish_non_exhaustive()
    }
}

impl Bus {
    fn lock(&self) -> MutexGuard<'_, BusState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Publishes `message` to the groups of `topic` that take `event_type` (every group
    /// for a message with none).
    fn publish(
        &self,
        topic: &str,
        key: Option<Key>,
        event_type: Option<&str>,
        message: Message,
    ) -> Result<(), TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        let message = Arc::new(message);
        // Held while the message goes to every group: a consumer that handles it at once
        // publishes what follows only after this message is in every group, so no group
        // (an observer's) sees an effect before its cause.
        let state = self.lock();
        let groups = state
            .groups
            .get(topic)
            .into_iter()
            .flat_map(HashMap::values)
            .filter(|group| group.takes(event_type));
        for group in groups {
            let (copies, delay) = match &self.chaos {
                Some((chaos, rng)) => {
                    let mut rng = lock(rng);
                    let copies = if rng.percent(chaos.duplicate_percent) {
                        2
                    } else {
                        1
                    };
                    let max_delay = u64::try_from(chaos.max_delay.as_micros()).unwrap_or(u64::MAX);
                    let delay = Duration::from_micros(rng.below(max_delay as usize) as u64);
                    (copies, delay)
                }
                None => (1, Duration::ZERO),
            };
            for _ in 0..copies {
                let entry = Entry {
                    message: Arc::clone(&message),
                    key: key.clone(),
                    deliveries: 0,
                };
                if delay.is_zero() {
                    group.push(entry);
                } else {
                    let group = Arc::clone(group);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        group.push(entry);
                    });
                }
            }
        }
        Ok(())
    }

    /// Group `name` of `topic`, made if new, which receives `types` from now on.
    fn group(&self, topic: &str, name: &str, types: Option<&[String]>) -> Arc<Group> {
        let mut state = self.lock();
        let groups = state.groups.entry(topic.to_owned()).or_default();
        let group = groups
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Group::new(topic)));
        group.receive(types);
        Arc::clone(group)
    }

    fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        let record = dead_letter_message(message.clone(), topic, reason);
        self.lock()
            .dead_letters
            .entry(topic.to_owned())
            .or_default()
            .push(DeadLetter {
                topic: topic.to_owned(),
                reason: reason.to_owned(),
                message,
            });
        let record = Message::Encoded(Arc::new(record));
        self.publish(&dead_letter_topic(topic), None, None, record)
    }

    fn pop(&self, group: &Group) -> Option<Entry> {
        match &self.chaos {
            Some((chaos, rng)) if chaos.reorder => group.pop(Some(&mut lock(rng))),
            _ => group.pop(None),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), PublishError> {
        publish_through_shared(self, topic, envelope).await
    }

    async fn publish_shared(
        &self,
        topic: &str,
        envelope: &Arc<Envelope>,
    ) -> Result<(), TransportError> {
        self.bus.publish(
            topic,
            Some(Key::Saga(envelope.saga_id)),
            Some(&envelope.event_type),
            Message::event(Arc::clone(envelope)),
        )
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.join(group, topics, None, false)
    }

    /// The group receives events of `types`, and raw messages (see
    /// [`publish_raw`](MemoryTransport::publish_raw)), as a queue on a broker that routes by
    /// type would.
    async fn subscribe_to_types(
        &self,
        group: &str,
        topics: &[String],
        types: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.join(group, topics, Some(types), false)
    }

    /// The observer's groups go when it is dropped, with whatever they held.
    async fn observe(
        &self,
        name: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.join(&observer_group(name), topics, None, true)
    }

    async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.bus.dead_letter(topic, message, reason)
    }
}

impl MemoryTransport {
    /// Joins group `name` on `topics` for `types` (`None`: every type); an observer's groups
    /// go when it is dropped.
    fn join(
        &self,
        name: &str,
        topics: &[String],
        types: Option<&[String]>,
        observer: bool,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        if self.bus.is_closed() {
            return Err(TransportError::Closed);
        }
        let groups = topics
            .iter()
            .map(|topic| self.bus.group(topic, name, types))
            .collect();
        Ok(Box::new(MemorySubscription {
            bus: Arc::clone(&self.bus),
            groups,
            next_group: 0,
            observer: observer.then(|| name.to_owned()),
        }))
    }
}

struct MemorySubscription {
    bus: Arc<Bus>,
    groups: Vec<Arc<Group>>,
    next_group: usize,
    /// An observer's name: its groups are removed with it.
    observer: Option<String>,
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let Some(name) = &self.observer else { return };
        let mut state = self.bus.lock();
        for group in &self.groups {
            if let Some(groups) = state.groups.get_mut(&group.topic) {
                // Held by the bus and by this subscription only: no other observer of the
                // name reads it.
                if groups
                    .get(name)
                    .is_some_and(|held| Arc::ptr_eq(held, group) && Arc::strong_count(held) == 2)
                {
                    groups.remove(name);
                }
            }
        }
    }
}

impl MemorySubscription {
    /// What [`next`](Subscription::next) returns now, if anything: the end once the broker
    /// is closed, else the next message.
    fn look(&mut self) -> Option<Result<Delivery, TransportError>> {
        if self.bus.is_closed() {
            return Some(Err(TransportError::Closed));
        }
        self.try_next().map(Ok)
    }

    /// Takes the next message from any of the subscribed topics, taking turns.
    fn try_next(&mut self) -> Option<Delivery> {
        for offset in 0..self.groups.len() {
            let index = (self.next_group + offset) % self.groups.len();
            let group = &self.groups[index];
            if let Some(entry) = self.bus.pop(group) {
                self.next_group = index + 1;
                let message = entry.message.encoded();
                let redelivered = entry.deliveries > 1;
                let topic = group.topic.clone();
                return Some(Delivery::new(
                    topic,
                    message,
                    redelivered,
                    Box::new(MemoryAck {
                        bus: Arc::clone(&self.bus),
                        group: Arc::clone(group),
                        entry: Some(entry),
                    }),
                ));
            }
        }
        None
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            if let Some(next) = self.look() {
                return next;
            }
            // Register for wake-ups before looking again, so none is missed in between.
            let bus = Arc::clone(&self.bus);
            let mut closing = pin!(bus.closing.notified());
            closing.as_mut().enable();
            match self.groups.as_slice() {
                // The usual case, one topic: waiting allocates nothing.
                [group] => {
                    let group = Arc::clone(group);
                    let mut ready = pin!(group.ready.notified());
                    ready.as_mut().enable();
                    if let Some(next) = self.look() {
                        return next;
                    }
                    tokio::select! {
                        () = closing => {}
                        () = ready => {}
                    }
                }
                groups => {
                    let groups = groups.to_vec();
                    let mut wakeups: Vec<_> = groups
                        .iter()
                        .map(|group| Box::pin(group.ready.notified()))
                        .collect();
                    for wakeup in &mut wakeups {
                        wakeup.as_mut().enable();
                    }
                    if let Some(next) = self.look() {
                        return next;
                    }
                    if wakeups.is_empty() {
                        closing.await;
                        continue;
                    }
                    tokio::select! {
                        () = closing => {}
                        _ = futures_util::future::select_all(wakeups) => {}
                    }
                }
            }
        }
    }
}

/// Settles one delivery; dropped unsettled, it returns the message for redelivery.
struct MemoryAck {
    bus: Arc<Bus>,
    group: Arc<Group>,
    entry: Option<Entry>,
}

#[async_trait]
impl Acknowledge for MemoryAck {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(entry) = self.entry.take() {
            self.group.settle(&entry);
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(entry) = self.entry.take() {
            self.group.requeue(entry);
        }
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.bus.dead_letter(&self.group.topic, message, reason)?;
        if let Some(entry) = self.entry.take() {
            self.group.settle(&entry);
        }
        Ok(())
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.group.requeue(entry);
        }
    }
}

#[cfg(test)]
mod tests;

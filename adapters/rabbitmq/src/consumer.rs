//! One consumer group membership: a task that keeps a consumer on the group's queue across
//! connection losses, and hands deliveries out in per-saga order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use choreo_core::transport::{Acknowledge, SharedKeyedQueue};
use choreo_core::{Delivery, RawMessage, Subscription, TransportError};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Acker;
use lapin::{Channel, Connection, Consumer};
use tokio_util::sync::CancellationToken;

use crate::binding;
use crate::config::RabbitMqConfig;
use crate::{open, refused, Inner};

/// A delivery until it is acked.
struct Pending {
    /// The connection it came on; its acker is void once that connection is gone.
    generation: u64,
    topic: String,
    message: RawMessage,
    acker: Acker,
    redelivered: bool,
}

#[derive(Default)]
struct Shared {
    queue: SharedKeyedQueue<Pending>,
    generation: AtomicU64,
}

impl Shared {
    fn current(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A new connection: deliveries of the old one will come again from the broker.
    fn reconnected(&self) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.queue
            .update(|queue| queue.retain(|pending| pending.generation == generation));
        generation
    }

    fn received(&self, generation: u64, topic: String, delivery: lapin::message::Delivery) {
        let headers = binding::from_amqp(
            delivery.properties.headers().as_ref(),
            delivery.properties.content_type().as_ref(),
        );
        let key = headers
            .iter()
            .find(|(name, _)| *name == "ce_sagaid")
            .map(|(_, value)| Arc::<str>::from(String::from_utf8_lossy(value).as_ref()));
        let pending = Pending {
            generation,
            topic,
            message: RawMessage {
                headers,
                body: delivery.data,
            },
            acker: delivery.acker,
            redelivered: delivery.redelivered,
        };
        self.queue.update(|queue| queue.push(key, pending));
    }

    fn settled(&self, key: Option<&Arc<str>>) {
        self.queue.settle(key);
    }

    fn returned(&self, key: Option<Arc<str>>, mut pending: Pending) {
        let current = self.current();
        self.queue.update(|queue| {
            if pending.generation == current {
                pending.redelivered = true;
                queue.requeue(key, pending);
            } else {
                // Its connection is gone: the broker delivers it again on the new one.
                queue.settle(key.as_ref());
            }
        });
    }
}

/// Who consumes a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Member {
    /// A consumer group: its queue stays, keeping events for members to come.
    Group,
    /// An observer: its queue goes with it.
    Observer,
}

/// How long an observer's queue outlives its last consumer (a process that died).
const OBSERVER_QUEUE_EXPIRES: Duration = Duration::from_secs(60);

/// The durable queue of a group: `<group>:<topic>[,<topic>...]`.
fn queue_name(group: &str, topics: &[String]) -> String {
    format!("{group}:{}", topics.join(","))
}

/// What a queue is bound to, and the topic each routing key it receives belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    topics: Vec<String>,
    /// The event types wanted; `None`: every type.
    types: Option<Vec<String>>,
    /// The topics' dead-letter topics, which a binding to every type of a topic also matches.
    dead_letters: Vec<String>,
}

impl Routes {
    pub(crate) fn new(
        config: &RabbitMqConfig,
        topics: &[String],
        types: Option<&[String]>,
    ) -> Self {
        Self {
            topics: topics.to_vec(),
            types: types.map(<[String]>::to_vec),
            dead_letters: topics
                .iter()
                .map(|topic| config.dead_letter_topic(topic))
                .collect(),
        }
    }

    /// The binding keys of `topic`: the bare topic, that publishers other than choreo may
    /// use, and `<topic>.<type>` for each type wanted, or `<topic>.#` for every type.
    fn binding_keys(&self, topic: &str) -> Vec<String> {
        let mut keys = vec![topic.to_owned()];
        match &self.types {
            Some(types) => keys.extend(types.iter().map(|t| routing_key(topic, t))),
            None => keys.push(format!("{topic}.#")),
        }
        keys
    }

    /// The topic a delivery with `routing_key` came on; `None` for a dead letter of one of
    /// the topics, which a `<topic>.#` binding lets in and which is not an event of it.
    fn topic_of(&self, routing_key: &str) -> Option<&str> {
        if let Some(topic) = self.topics.iter().find(|topic| *topic == routing_key) {
            return Some(topic);
        }
        if self.dead_letters.iter().any(|dead| dead == routing_key) {
            return None;
        }
        self.topics
            .iter()
            .filter(|topic| {
                routing_key
                    .strip_prefix(topic.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            })
            .max_by_key(|topic| topic.len())
            .map(String::as_str)
            .or_else(|| self.topics.first().map(String::as_str))
    }
}

/// The routing key of an event of `event_type` on `topic`: `<topic>.<type>`.
pub(crate) fn routing_key(topic: &str, event_type: &str) -> String {
    format!("{topic}.{event_type}")
}

/// Declares the group's queue, the topics' dead-letter queues and the bindings, and starts
/// consuming. Idempotent: run on every (re)connection.
async fn consume(
    config: &RabbitMqConfig,
    member: Member,
    group: &str,
    routes: &Routes,
) -> Result<(Connection, Channel, Consumer), TransportError> {
    let topics = routes.topics.as_slice();
    let (connection, channel) = open(config).await?;
    let exchange = ShortString::from(config.exchange.as_str());
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let bind = |queue: String, topic: String| {
        let channel = channel.clone();
        let exchange = exchange.clone();
        async move {
            channel
                .queue_bind(
                    ShortString::from(queue),
                    exchange,
                    ShortString::from(topic),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    };
    for topic in topics {
        let dead_letters = config.dead_letter_topic(topic);
        channel
            .queue_declare(
                ShortString::from(dead_letters.as_str()),
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(|error| refused(config, error))?;
        bind(dead_letters.clone(), dead_letters)
            .await
            .map_err(|error| refused(config, error))?;
    }
    let queue = queue_name(group, topics);
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from(config.exchange.as_str())),
    );
    if let Some(first) = topics.first() {
        arguments.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(config.dead_letter_topic(first))),
        );
    }
    if member == Member::Observer {
        // What an observer drops is nobody's dead letter.
        arguments = FieldTable::default();
        let expires = u32::try_from(OBSERVER_QUEUE_EXPIRES.as_millis()).unwrap_or(u32::MAX);
        arguments.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(expires));
    }
    channel
        .queue_declare(ShortString::from(queue.as_str()), durable, arguments)
        .await
        .map_err(|error| refused(config, error))?;
    for topic in topics {
        for key in routes.binding_keys(topic) {
            bind(queue.clone(), key)
                .await
                .map_err(|error| refused(config, error))?;
        }
    }
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|error| refused(config, error))?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| refused(config, error))?;
    Ok((connection, channel, consumer))
}

/// A consumer group membership.
pub(crate) struct RabbitMqSubscription {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl RabbitMqSubscription {
    /// Consumes the group's queue; the first connection must succeed, later ones are retried.
    pub(crate) async fn start(
        inner: Arc<Inner>,
        member: Member,
        group: &str,
        routes: Routes,
    ) -> Result<Self, TransportError> {
        let first = consume(&inner.config, member, group, &routes).await?;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        tokio::spawn(run(
            Arc::clone(&inner),
            member,
            group.to_owned(),
            routes,
            Arc::clone(&shared),
            stop.clone(),
            first,
        ));
        Ok(Self {
            inner,
            shared,
            stop,
        })
    }
}

/// Receives into the shared queue until stopped, reconnecting with backoff when the
/// connection is lost.
async fn run(
    inner: Arc<Inner>,
    member: Member,
    group: String,
    routes: Routes,
    shared: Arc<Shared>,
    stop: CancellationToken,
    first: (Connection, Channel, Consumer),
) {
    let config = &inner.config;
    let mut current = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let (connection, channel, mut consumer) = match current.take() {
            Some(consumer) => consumer,
            None => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.reconnect_max);
                match consume(config, member, &group, &routes).await {
                    Ok(consumer) => {
                        tracing::info!(%group, "reconnected to RabbitMQ");
                        consumer
                    }
                    Err(error) => {
                        tracing::warn!(%group, %error, "cannot reconnect to RabbitMQ; retrying");
                        continue;
                    }
                }
            }
        };
        backoff = Duration::from_millis(100);
        let generation = shared.reconnected();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    if member == Member::Observer {
                        // Only if nobody else consumes it (an observer of the same name).
                        let _ = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await;
                        let unused = QueueDeleteOptions { if_unused: true, ..QueueDeleteOptions::default() };
                        let queue = ShortString::from(queue_name(&group, &routes.topics));
                        let _ = channel.queue_delete(queue, unused).await;
                    }
                    // Unacked deliveries go back to the queue when the channel closes.
                    let _ = channel.close(200, ShortString::from("subscription closed")).await;
                    let _ = connection.close(200, ShortString::from("subscription closed")).await;
                    return;
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => match routes.topic_of(delivery.routing_key.as_str()) {
                        Some(topic) => {
                            let topic = topic.to_owned();
                            shared.received(generation, topic, delivery);
                        }
                        None => {
                            // A dead letter is not an event of the topic; its own queue keeps it.
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        }
                    },
                    Some(Err(error)) => {
                        tracing::warn!(%group, %error, "RabbitMQ connection lost; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!(%group, "RabbitMQ consumer cancelled; reconnecting");
                        break;
                    }
                },
            }
        }
    }
}

#[async_trait]
impl Subscription for RabbitMqSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        let stop = &self.stop;
        let Some((key, pending)) = self.shared.queue.pop(|| stop.is_cancelled()).await else {
            return Err(TransportError::Closed);
        };
        Ok(Delivery::new(
            pending.topic.clone(),
            pending.message.clone(),
            pending.redelivered,
            Box::new(RabbitMqAck {
                inner: Arc::clone(&self.inner),
                shared: Arc::clone(&self.shared),
                key,
                pending: Some(pending),
            }),
        ))
    }
}

impl Drop for RabbitMqSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Settles one delivery; dropped unsettled, it hands the message back for redelivery.
struct RabbitMqAck {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    key: Option<Arc<str>>,
    pending: Option<Pending>,
}

impl RabbitMqAck {
    async fn ack_pending(&mut self) -> Result<(), TransportError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let result = pending.acker.ack(BasicAckOptions::default()).await;
        self.shared.settled(self.key.as_ref());
        // A lost connection voids the ack: the broker redelivers and the inbox absorbs it.
        result
            .map(|_| ())
            .map_err(|error| TransportError::Connection(error.to_string()))
    }
}

#[async_trait]
impl Acknowledge for RabbitMqAck {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.ack_pending().await
    }

    async fn nack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(pending) = self.pending.take() {
            self.shared.returned(self.key.take(), pending);
        }
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        let topic = match &self.pending {
            Some(pending) => pending.topic.clone(),
            None => return Ok(()),
        };
        // On failure, `self` is dropped unsettled and the message is delivered again.
        self.inner.dead_letter(&topic, message, reason).await?;
        self.ack_pending().await
    }
}

impl Drop for RabbitMqAck {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.shared.returned(self.key.take(), pending);
        }
    }
}

//! What a broker must offer choreo: publish, consumer-group subscriptions with manual
//! acknowledgement (at-least-once), and a dead-letter destination.

mod keyed;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

pub use self::keyed::{KeyedQueue, SharedKeyedQueue};

use crate::envelope::{Envelope, RawMessage};
use crate::error::BoxError;

/// A broker connection. Object-safe: services hold an `Arc<dyn Transport>`.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The transport's name, e.g. `memory`, `kafka`; used in logs and span attributes.
    fn name(&self) -> &'static str;

    /// Publishes `envelope` to `topic` and returns once the broker has accepted it.
    /// On failure the envelope is handed back inside the error.
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), PublishError>;

    /// Publishes `envelope`, which the caller keeps, to `topic`, as
    /// [`publish`](Self::publish) does: the runtime sends this way what a saga's record
    /// keeps. By default, `publish` of a copy; a transport that only reads the envelope (to
    /// encode it) or queues it as it is should publish it without the copy, and may then
    /// write `publish` with [`publish_through_shared`]. One of the two must do the work:
    /// a `publish` written with `publish_through_shared` and this default call each other.
    async fn publish_shared(
        &self,
        topic: &str,
        envelope: &Arc<Envelope>,
    ) -> Result<(), TransportError> {
        self.publish(topic, Envelope::clone(envelope))
            .await
            .map_err(|error| error.source)
    }

    /// Joins consumer group `group` on `topics`. Members of one group compete for events;
    /// every group receives every event. Events of one saga are delivered in order.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError>;

    /// Joins consumer group `group` on `topics` for the events of `types`: like
    /// [`subscribe`](Self::subscribe), for a group that acts on those types only. A
    /// transport that routes by type (RabbitMQ) may deliver only events of `types`, and the
    /// messages a foreign publisher sent without a type to route by; by default every event
    /// comes, and the group ignores the rest. A group that must see every event subscribes
    /// with [`subscribe`](Self::subscribe).
    async fn subscribe_to_types(
        &self,
        group: &str,
        topics: &[String],
        types: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let _ = types;
        self.subscribe(group, topics).await
    }

    /// Joins `topics` as observer `name`: like [`subscribe`](Self::subscribe), for a reader
    /// that takes no event from any service's group and must leave nothing behind on the
    /// broker once it is gone (a saga log, a monitor). Its group is
    /// [`observer_group(name)`](observer_group), apart from every service's; give each
    /// observer a name of its own. By default, that consumer group; a transport whose groups
    /// keep events for absent members (a RabbitMQ queue, an in-memory group) removes what the
    /// observer had when it stops.
    async fn observe(
        &self,
        name: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.subscribe(&observer_group(name), topics).await
    }

    /// Transport-specific attributes of `envelope` on `topic` for its spans, after the
    /// OpenTelemetry messaging conventions (e.g. `messaging.kafka.message.key`). Called only
    /// while spans are recorded.
    fn span_attributes(&self, topic: &str, envelope: &Envelope) -> Vec<opentelemetry::KeyValue> {
        let _ = (topic, envelope);
        Vec::new()
    }

    /// Sends `message` to the dead-letter destination of `topic` with `reason`.
    async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError>;
}

/// [`Transport::publish`] through [`Transport::publish_shared`]: all of `publish` for a
/// transport that only reads the events it publishes, or queues them shared, and overrides
/// `publish_shared` (whose default calls `publish`). On failure the envelope is handed back,
/// as `publish` promises.
pub async fn publish_through_shared<T: Transport + ?Sized>(
    transport: &T,
    topic: &str,
    envelope: Envelope,
) -> Result<(), PublishError> {
    let envelope = Arc::new(envelope);
    transport
        .publish_shared(topic, &envelope)
        .await
        .map_err(|source| PublishError::new(Arc::unwrap_or_clone(envelope), topic, source))
}

/// The consumer group of observer `name` ([`Transport::observe`]): `observer.<name>`, so that
/// an observer never joins a service's group.
pub fn observer_group(name: &str) -> String {
    format!("observer.{name}")
}

/// A consumer group membership: a stream of deliveries.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; [`TransportError::Closed`] once the transport is closed.
    async fn next(&mut self) -> Result<Delivery, TransportError>;
}

/// One received message, to be settled exactly once: [`ack`](Delivery::ack) after it was
/// handled, [`nack`](Delivery::nack) to have it redelivered, or
/// [`dead_letter`](Delivery::dead_letter). A delivery dropped unsettled is redelivered.
pub struct Delivery {
    /// The topic it came from.
    pub topic: String,
    /// The message as received, shared: a transport that keeps it for redelivery hands it
    /// out without copying.
    pub message: Arc<RawMessage>,
    /// Whether the broker delivered it before (it may still be a first delivery if false).
    pub redelivered: bool,
    acknowledger: Box<dyn Acknowledge>,
}

impl Delivery {
    /// A delivery settled through `acknowledger`. For transport implementations.
    pub fn new(
        topic: String,
        message: impl Into<Arc<RawMessage>>,
        redelivered: bool,
        acknowledger: Box<dyn Acknowledge>,
    ) -> Self {
        Self {
            topic,
            message: message.into(),
            redelivered,
            acknowledger,
        }
    }

    /// Confirms the message was handled; it will not be delivered to this group again.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.acknowledger.ack().await
    }

    /// Returns the message for redelivery.
    pub async fn nack(self) -> Result<(), TransportError> {
        self.acknowledger.nack().await
    }

    /// Adds header `name` to the message, as it goes on from here (to the dead-letter
    /// destination, say). The message as the transport keeps it is left alone.
    pub fn add_header(&mut self, name: &str, value: impl AsRef<[u8]>) {
        Arc::make_mut(&mut self.message)
            .headers
            .push(name, value.as_ref());
    }

    /// Moves the message to the dead-letter destination with `reason`, and acks it.
    pub async fn dead_letter(self, reason: &str) -> Result<(), TransportError> {
        self.acknowledger
            .dead_letter(Arc::unwrap_or_clone(self.message), reason)
            .await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("redelivered", &self.redelivered)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// How a transport settles one delivery. For transport implementations.
#[async_trait]
pub trait Acknowledge: Send {
    /// See [`Delivery::ack`].
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// See [`Delivery::nack`].
    async fn nack(self: Box<Self>) -> Result<(), TransportError>;
    /// See [`Delivery::dead_letter`].
    async fn dead_letter(
        self: Box<Self>,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError>;
}

/// The header that carries a dead letter's reason.
pub const DEAD_LETTER_REASON_HEADER: &str = "choreo-dead-letter-reason";
/// The header that carries the topic a dead letter came from.
pub const DEAD_LETTER_TOPIC_HEADER: &str = "choreo-dead-letter-topic";
/// The header of a dead letter that was too large for its destination and was sent cut
/// down: what was left out, `body` (all or part of it) or `body,headers` (the original
/// message's headers too; the `choreo-dead-letter-*` headers are always kept).
pub const DEAD_LETTER_TRUNCATED_HEADER: &str = "choreo-dead-letter-truncated";
/// The header of a truncated dead letter that carries the original body's size in bytes.
pub const DEAD_LETTER_ORIGINAL_SIZE_HEADER: &str = "choreo-dead-letter-original-size";

/// `message` as a dead letter from `topic`: its headers and body, plus the reason and the topic
/// it came from in [`DEAD_LETTER_REASON_HEADER`] and [`DEAD_LETTER_TOPIC_HEADER`].
pub fn dead_letter_message(mut message: RawMessage, topic: &str, reason: &str) -> RawMessage {
    message
        .headers
        .push(DEAD_LETTER_REASON_HEADER, reason.as_bytes());
    message
        .headers
        .push(DEAD_LETTER_TOPIC_HEADER, topic.as_bytes());
    message
}

/// The dead-letter topic of `topic` by default: `<topic>.dlq`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport or subscription is closed.
    #[error("transport is closed")]
    Closed,
    /// The broker cannot be reached or the connection broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The broker refused the request.
    #[error("broker refused: {0}")]
    Refused(String),
    /// Anything else.
    #[error(transparent)]
    Other(BoxError),
}

/// A failed publish; the envelope is handed back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish event {} to `{topic}`: {source}", envelope.id)]
pub struct PublishError {
    /// The envelope that was not published.
    pub envelope: Box<Envelope>,
    /// Where it was going.
    pub topic: String,
    /// Why it failed.
    #[source]
    pub source: TransportError,
}

impl PublishError {
    /// `envelope` could not be published to `topic` because of `source`.
    pub fn new(envelope: Envelope, topic: &str, source: TransportError) -> Self {
        Self {
            envelope: Box::new(envelope),
            topic: topic.to_owned(),
            source,
        }
    }
}

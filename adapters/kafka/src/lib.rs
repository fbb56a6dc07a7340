//! The Kafka transport of choreo, on rdkafka (librdkafka).
//!
//! - Publishing: CloudEvents binary mode (`ce_*` headers, data as the value), the saga id as
//!   the message key so a saga's events keep their order on one partition; an idempotent
//!   producer with `acks=all`; `publish` returns once the broker acknowledged, and hands the
//!   envelope back when it did not.
//! - Consuming: one consumer group per service. Offsets are committed by choreo only, and only
//!   up to the oldest delivery not yet acked, so an event is committed after its handler and
//!   publishes succeeded; safe offsets are committed before partitions are revoked and when a
//!   subscription closes. Partitions are consumed in parallel; within one saga, deliveries are
//!   in flight one at a time and in order. A nacked or dropped delivery is delivered again by
//!   the subscription; after a crash, the uncommitted ones are redelivered by Kafka and the
//!   runtime's inbox absorbs them.
//! - Dead letters of `t` go to `t.dlq` with the reason in headers; the partition goes on. A
//!   dead letter too large for the producer's `message.max.bytes` (or refused by the broker
//!   as too large) is sent cut down to fit, saying so in its headers, rather than lost or
//!   redelivered without end.
//! - Topics are created on demand with the configured partitions.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod consumer;
mod oversize;

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use choreo_core::transport::{dead_letter_message, publish_through_shared};
use choreo_core::{
    ConnectError, Envelope, PublishError, RawMessage, Subscription, Transport, TransportError,
    TransportUrl,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

pub use crate::config::KafkaConfig;

/// A connection to a Kafka cluster. Clones share it.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    known_topics: Mutex<HashSet<String>>,
    leaving: consumer::Leaving,
}

impl KafkaTransport {
    /// Connects to the cluster named by a `kafka://` URL and checks that it answers within
    /// `connect.timeout.ms`.
    pub async fn connect(url: &TransportUrl) -> Result<Self, ConnectError> {
        let config = KafkaConfig::from_url(url)?;
        let unreachable = |detail: String| ConnectError::Transport {
            url: url.redacted(),
            source: TransportError::Connection(detail),
        };
        let producer: FutureProducer = config
            .producer()
            .create()
            .map_err(|error| unreachable(scrub(error, &config)))?;
        let admin: AdminClient<DefaultClientContext> = config
            .client()
            .create()
            .map_err(|error| unreachable(scrub(error, &config)))?;
        let probe = producer.clone();
        let timeout = config.connect_timeout;
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout))
            .await
            .map_err(|error| unreachable(error.to_string()))?
            .map_err(|error| {
                unreachable(format!(
                    "no answer from {} within {timeout:?}: {}",
                    config.bootstrap_servers,
                    scrub(error, &config)
                ))
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                known_topics: Mutex::new(HashSet::new()),
                leaving: consumer::Leaving::default(),
            }),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Publishes an already encoded message (e.g. one bridged from another system, or a
    /// malformed one in a test), keyed by `key` if given.
    pub async fn publish_raw(
        &self,
        topic: &str,
        key: Option<&str>,
        message: &RawMessage,
    ) -> Result<(), TransportError> {
        self.inner.produce(topic, key, message).await
    }
}

impl Inner {
    /// Creates `topic` with the configured partitions unless it is known to exist.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<(), TransportError> {
        if self.known().contains(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.config.partitions,
            TopicReplication::Fixed(self.config.replication),
        );
        let options =
            AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
        let results = self
            .admin
            .create_topics(&[new], &options)
            .await
            .map_err(|error| TransportError::Connection(error.to_string()))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(TransportError::Refused(format!(
                        "cannot create topic `{name}`: {code}"
                    )))
                }
            }
        }
        self.known().insert(topic.to_owned());
        Ok(())
    }

    fn forget_topic(&self, topic: &str) {
        self.known().remove(topic);
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.known_topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Produces `message` to `topic` and waits for the broker's acknowledgement.
    pub(crate) async fn produce(
        &self,
        topic: &str,
        key: Option<&str>,
        message: &RawMessage,
    ) -> Result<(), TransportError> {
        self.send(topic, key, message)
            .await
            .map_err(|error| error.into_transport(&self.config))
    }

    /// [`produce`](Self::produce), telling a message too large for the producer or the
    /// broker from other failures.
    async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        message: &RawMessage,
    ) -> Result<(), SendError> {
        self.ensure_topic(topic).await.map_err(SendError::Topic)?;
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len());
        for (name, value) in &message.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut record = FutureRecord::to(topic)
            .payload(&message.body)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        match self
            .producer
            .send(record, Timeout::After(self.config.message_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                // The broker may have lost the topic (e.g. it restarted with memory storage):
                // make sure it exists before the next attempt.
                self.forget_topic(topic);
                Err(SendError::Kafka(error))
            }
        }
    }

    /// Sends `message` to the dead-letter topic of `topic`. A letter larger than the
    /// producer's `message.max.bytes` goes with its body cut to fit (its headers too, if they
    /// alone do not fit); one the broker refuses as too large goes again without a body, then
    /// with only choreo's headers. Any other failure is returned, and the message is
    /// delivered again.
    pub(crate) async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        let destination = self.config.dead_letter_topic(topic);
        let letter = dead_letter_message(message, topic, reason);
        let max_bytes = self.config.max_message_bytes();
        let mut sending = oversize::fit(&letter, max_bytes);
        loop {
            match self.send(&destination, None, &sending).await {
                Ok(()) => {
                    if let Cow::Owned(sent) = &sending {
                        tracing::warn!(
                            %destination, reason,
                            bytes = letter.body.len(),
                            sent_bytes = sent.body.len(),
                            max_bytes,
                            "dead letter too large to send whole: sent cut down"
                        );
                    }
                    return Ok(());
                }
                Err(error) if error.too_large() => match oversize::smaller(&letter, &sending) {
                    Some(smaller) => {
                        tracing::debug!(%destination, "dead letter refused as too large; sending less of it");
                        sending = Cow::Owned(smaller);
                    }
                    None => return Err(error.into_transport(&self.config)),
                },
                Err(error) => return Err(error.into_transport(&self.config)),
            }
        }
    }
}

/// Why a produce failed.
enum SendError {
    /// The topic could not be made sure of.
    Topic(TransportError),
    /// The producer or the broker refused or lost the message.
    Kafka(KafkaError),
}

impl SendError {
    /// Whether the message was refused as too large, by the producer or by the broker.
    fn too_large(&self) -> bool {
        match self {
            Self::Topic(_) => false,
            Self::Kafka(error) => matches!(
                error.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
                )
            ),
        }
    }

    fn into_transport(self, config: &KafkaConfig) -> TransportError {
        match self {
            Self::Topic(error) => error,
            Self::Kafka(error) => classify(error, config),
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn span_attributes(&self, _topic: &str, envelope: &Envelope) -> Vec<opentelemetry::KeyValue> {
        // The saga id is the message key: it keeps a saga's events on one partition.
        vec![opentelemetry::KeyValue::new(
            "messaging.kafka.message.key",
            envelope.saga_id.to_string(),
        )]
    }

    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), PublishError> {
        publish_through_shared(self, topic, envelope).await
    }

    /// Keyed by the saga id.
    async fn publish_shared(
        &self,
        topic: &str,
        envelope: &Arc<Envelope>,
    ) -> Result<(), TransportError> {
        let key = envelope.saga_id.to_string();
        self.inner
            .produce(topic, Some(&key), &envelope.to_binary())
            .await
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        for topic in topics {
            self.inner.ensure_topic(topic).await?;
        }
        let subscription =
            consumer::KafkaSubscription::start(Arc::clone(&self.inner), group, topics).await?;
        Ok(Box::new(subscription))
    }

    async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.inner.dead_letter(topic, message, reason).await
    }
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A Kafka error as a transport error, with any password removed from its text.
pub(crate) fn classify(error: KafkaError, config: &KafkaConfig) -> TransportError {
    let text = scrub(&error, config);
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException,
        ) => TransportError::Connection(text),
        _ => TransportError::Refused(text),
    }
}

/// The error's text, with the URL's password (if any) replaced.
pub(crate) fn scrub(error: impl std::fmt::Display, config: &KafkaConfig) -> String {
    let text = error.to_string();
    match config.password() {
        Some(password) if !password.is_empty() => text.replace(password, "***"),
        _ => text,
    }
}

//! The RabbitMQ transport of choreo, on lapin.
//!
//! - Topology, declared idempotently whenever a connection is made: one durable topic
//!   exchange for events (`choreo.events` by default); an event is routed by
//!   `<topic>.<type>`. Per consumer group (service) and topic a durable queue
//!   `<group>:<topic>`, bound to `<topic>.<type>` for each type the service acts on (every
//!   type, `<topic>.#`, for observers and the reverse compensation order) and to the bare
//!   topic, which publishers other than choreo may use; its rejected messages go
//!   (`x-dead-letter-exchange`) to the topic's dead-letter queue `<topic>.dlq`.
//! - Publishing: persistent messages in the CloudEvents RabbitMQ binding's binary mode
//!   (attributes in `ce-*` headers, the data content type in the `content_type` property;
//!   the older `ce_*` form is read too), publisher confirms; `publish` returns after the confirm and hands the envelope
//!   back on a nack or a broken connection (an event no queue is bound to is dropped, as a
//!   publish with no subscriber is; a dead letter no queue takes is handed back). Concurrent publishes share
//!   a channel, so confirms are pipelined.
//! - Consuming: manual acks after the handler and its publishes succeeded, `basic_qos`
//!   prefetch; deliveries of one saga are handed out one at a time and in order. A poison
//!   message is published to `<topic>.dlq` with its reason and acked.
//! - TLS: `amqps://` uses rustls (ring) and the system's trust roots, plus the CA certificates
//!   of `ssl.ca.location`; `ssl.certificate.location` and `ssl.key.location` give a client
//!   certificate.
//! - Connection loss: subscriptions reconnect with exponential backoff, re-declare the
//!   topology and resume; unacked deliveries come back from the broker and the runtime's inbox
//!   absorbs repeats. Publishing reconnects on its next call.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod binding;
mod config;
mod consumer;

use std::sync::Arc;

use async_trait::async_trait;
use choreo_core::transport::{dead_letter_message, observer_group, publish_through_shared};
use choreo_core::{
    ConnectError, Envelope, PublishError, RawMessage, Subscription, Transport, TransportError,
    TransportUrl,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Confirmation;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, DefaultConnectionBuilder,
    ExchangeKind,
};
use tokio::sync::Mutex;

pub use crate::config::RabbitMqConfig;

/// A connection to a RabbitMQ broker. Clones share it.
#[derive(Clone)]
pub struct RabbitMqTransport {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RabbitMqConfig,
    /// The publishing channel, made again after a connection loss.
    publisher: Mutex<Option<(Connection, Channel)>>,
}

impl RabbitMqTransport {
    /// Connects to the broker named by an `amqp://` URL, within `connect.timeout.ms`.
    pub async fn connect(url: &TransportUrl) -> Result<Self, ConnectError> {
        let config = RabbitMqConfig::from_url(url)?;
        let inner = Arc::new(Inner {
            config,
            publisher: Mutex::new(None),
        });
        inner
            .publishing_channel()
            .await
            .map_err(|source| ConnectError::Transport {
                url: url.redacted(),
                source,
            })?;
        Ok(Self { inner })
    }

    /// The settings in use.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.inner.config
    }

    /// Consumes `group`'s queue on `topics`, bound to `types` (`None`: every type).
    async fn join(
        &self,
        member: consumer::Member,
        group: &str,
        topics: &[String],
        types: Option<&[String]>,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let routes = consumer::Routes::new(&self.inner.config, topics, types);
        let subscription =
            consumer::RabbitMqSubscription::start(Arc::clone(&self.inner), member, group, routes)
                .await?;
        Ok(Box::new(subscription))
    }

    /// Publishes an already encoded message to `topic` (e.g. a malformed one in a test),
    /// routed by the bare topic as a publisher other than choreo would: every service's
    /// queue on the topic receives it. Refused when no queue is bound to the topic.
    pub async fn publish_raw(
        &self,
        topic: &str,
        message: &RawMessage,
    ) -> Result<(), TransportError> {
        self.inner.publish(topic, message, true).await
    }
}

/// Opens a connection and a channel, declaring the events exchange.
pub(crate) async fn open(config: &RabbitMqConfig) -> Result<(Connection, Channel), TransportError> {
    let attempt = async {
        let connection = DefaultConnectionBuilder::new()
            .map_err(|error| connection_error(config, error))?
            .with_uri_str(config.uri().to_owned())
            .with_properties(ConnectionProperties::default())
            .with_tls_config(config.tls_config().clone())
            .connect()
            .await
            .map_err(|error| connection_error(config, error))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connection_error(config, error))?;
        channel
            .exchange_declare(
                ShortString::from(config.exchange.as_str()),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|error| refused(config, error))?;
        Ok((connection, channel))
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Connection(format!(
            "no answer from {} within {:?}",
            config.redacted(),
            config.connect_timeout
        ))),
    }
}

pub(crate) fn connection_error(config: &RabbitMqConfig, error: lapin::Error) -> TransportError {
    TransportError::Connection(format!("{}: {error}", config.redacted()))
}

pub(crate) fn refused(config: &RabbitMqConfig, error: lapin::Error) -> TransportError {
    TransportError::Refused(format!("{}: {error}", config.redacted()))
}

impl Inner {
    /// The publishing channel, opened (again) if there is none or it broke.
    async fn publishing_channel(&self) -> Result<Channel, TransportError> {
        let mut publisher = self.publisher.lock().await;
        if let Some((connection, channel)) = publisher.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let (connection, channel) = open(&self.config).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| refused(&self.config, error))?;
        *publisher = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn forget_channel(&self) {
        self.publisher.lock().await.take();
    }

    /// Publishes `message` with `routing_key` and waits for the broker's confirm.
    /// `mandatory`: a message that no queue is bound to is refused, not dropped.
    pub(crate) async fn publish(
        &self,
        routing_key: &str,
        message: &RawMessage,
        mandatory: bool,
    ) -> Result<(), TransportError> {
        let result = async {
            let channel = self.publishing_channel().await?;
            let (headers, content_type) = binding::to_amqp(message);
            let mut properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            if let Some(content_type) = content_type {
                properties = properties.with_content_type(content_type);
            }
            let confirm = channel
                .basic_publish(
                    ShortString::from(self.config.exchange.as_str()),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    properties,
                )
                .await
                .map_err(|error| connection_error(&self.config, error))?;
            let confirmation = tokio::time::timeout(self.config.publish_timeout, confirm)
                .await
                .map_err(|_| {
                    TransportError::Connection(format!(
                        "no confirm within {:?}",
                        self.config.publish_timeout
                    ))
                })?
                .map_err(|error| connection_error(&self.config, error))?;
            match confirmation {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
                Confirmation::Ack(Some(_)) => Err(TransportError::Refused(format!(
                    "no queue is bound to `{routing_key}` on exchange `{}`",
                    self.config.exchange
                ))),
                Confirmation::Nack(_) => Err(TransportError::Refused(
                    "the broker did not accept the message (nack)".to_owned(),
                )),
            }
        }
        .await;
        if matches!(result, Err(TransportError::Connection(_))) {
            self.forget_channel().await;
        }
        result
    }

    pub(crate) async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        let record = dead_letter_message(message, topic, reason);
        self.publish(&self.config.dead_letter_topic(topic), &record, true)
            .await
    }
}

#[async_trait]
impl Transport for RabbitMqTransport {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn span_attributes(&self, topic: &str, envelope: &Envelope) -> Vec<opentelemetry::KeyValue> {
        vec![opentelemetry::KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            consumer::routing_key(topic, &envelope.event_type),
        )]
    }

    /// Routed by `<topic>.<type>`. Not mandatory: an event of a type that no service
    /// handles is dropped by the broker, as a publish with no subscriber is.
    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), PublishError> {
        publish_through_shared(self, topic, envelope).await
    }

    /// Routed by `<topic>.<type>`, as [`publish`](Self::publish).
    async fn publish_shared(
        &self,
        topic: &str,
        envelope: &Arc<Envelope>,
    ) -> Result<(), TransportError> {
        let routing_key = consumer::routing_key(topic, &envelope.event_type);
        self.inner
            .publish(&routing_key, &envelope.to_binary(), false)
            .await
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.join(consumer::Member::Group, group, topics, None)
            .await
    }

    /// The group's queue is bound to `<topic>.<type>` for each of `types`, and to the bare
    /// topic. Bindings are added, never removed: a type dropped from a group's list keeps
    /// coming to its queue, and the group ignores it.
    async fn subscribe_to_types(
        &self,
        group: &str,
        topics: &[String],
        types: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.join(consumer::Member::Group, group, topics, Some(types))
            .await
    }

    /// The observer's queue is deleted when it stops, and expires a minute after its last
    /// consumer went if its process died; events published meanwhile are lost to it.
    async fn observe(
        &self,
        name: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let group = observer_group(name);
        self.join(consumer::Member::Observer, &group, topics, None)
            .await
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

impl std::fmt::Debug for RabbitMqTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqTransport")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

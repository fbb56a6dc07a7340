//! RabbitMQ (from the test kit): the saga through choreo against hand-written lapin code
//! with the same persistence, publisher confirms, prefetch and manual acks.

use std::sync::Arc;
use std::time::Instant;

use choreo::rabbitmq::{RabbitMqConfig, RabbitMqTransport};
use choreo::{Transport, TransportUrl};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::events::{Probe, EVENTS_PER_SAGA};
use crate::monitor::Ingest;
use crate::raw::{react, RawEvent};
use crate::report::Run;

/// choreo, then (with `monitored`) choreo with the saga console's monitor beside it, then
/// the hand-written baseline, on one broker.
pub(crate) async fn compare(
    sagas: usize,
    window: usize,
    monitored: bool,
) -> (Run, Run, Option<(Run, Ingest)>) {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = TransportUrl::parse(broker.url()).expect("an AMQP URL");
    let transport: Arc<dyn Transport> = Arc::new(
        RabbitMqTransport::connect(&url)
            .await
            .expect("RabbitMQ is up"),
    );
    let choreo = crate::runtime::play(
        Arc::clone(&transport),
        "bench.rabbitmq.choreo",
        crate::runtime::Setup {
            store: "memory://bench.rabbitmq.{service}",
            instances: 1,
            starters: 1,
        },
        sagas,
        window,
        false,
    )
    .await;
    let monitored = if monitored {
        let played = crate::runtime::play_monitored(
            transport,
            "bench.rabbitmq.monitored",
            crate::runtime::Setup {
                store: "memory://bench.rabbitmq.monitored.{service}",
                instances: 1,
                starters: 1,
            },
            sagas,
            window,
        )
        .await;
        Some(played)
    } else {
        None
    };
    let config = RabbitMqConfig::from_url(&url).expect("valid options");
    let raw = raw(&config, "bench.rabbitmq.raw", sagas, window).await;
    (choreo, raw, monitored)
}

async fn channel(config: &RabbitMqConfig) -> (Connection, Channel) {
    let connection = Connection::connect(config.uri(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ accepts the connection");
    let channel = connection.create_channel().await.expect("a channel");
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
        .expect("the exchange");
    (connection, channel)
}

async fn raw(config: &RabbitMqConfig, topic: &str, sagas: usize, window: usize) -> Run {
    let (_publisher_connection, publisher) = channel(config).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let probe = Probe::new(window, false, None);
    let mut services = Vec::new();
    for service in ["alpha", "beta", "gamma"] {
        let (connection, channel) = channel(config).await;
        let queue = format!("raw-{service}:{topic}");
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                durable,
                FieldTable::default(),
            )
            .await
            .expect("the queue");
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(config.exchange.as_str()),
                ShortString::from(topic),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("the binding");
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .expect("the prefetch");
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming");
        let task = tokio::spawn(run_service(
            service,
            consumer,
            publisher.clone(),
            config.exchange.clone(),
            topic.to_owned(),
            Arc::clone(&probe),
        ));
        services.push((connection, task));
    }

    let started = Instant::now();
    for n in 0..sagas {
        probe.admit().await;
        let first = RawEvent::first(probe.payload(n as u64));
        publish(&publisher, &config.exchange, topic, &first).await;
    }
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    for (_connection, task) in services {
        task.abort();
    }
    Run::new(sagas * EVENTS_PER_SAGA, elapsed, Vec::new())
}

/// Publishes persistently and waits for the broker's confirm.
async fn publish(channel: &Channel, exchange: &str, topic: &str, event: &RawEvent) {
    let payload = serde_json::to_vec(event).expect("encodes");
    channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(topic),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &payload,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
}

/// One service: take deliveries up to the prefetch, publish the next event, ack each
/// delivery once its publish is confirmed.
async fn run_service(
    service: &'static str,
    mut consumer: lapin::Consumer,
    publisher: Channel,
    exchange: String,
    topic: String,
    probe: Arc<Probe>,
) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let delivery = delivery.expect("the consumer runs").expect("a delivery");
                let event: RawEvent = serde_json::from_slice(&delivery.data).expect("JSON");
                let next = react(service, &event, &probe);
                let (publisher, exchange, topic) = (publisher.clone(), exchange.clone(), topic.clone());
                in_flight.push_back(async move {
                    if let Some(next) = next {
                        publish(&publisher, &exchange, &topic, &next).await;
                    }
                    delivery.acker
                });
            }
            Some(acker) = in_flight.next() => {
                acker.ack(BasicAckOptions::default()).await.expect("acked");
            }
        }
    }
}

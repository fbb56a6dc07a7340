//! RabbitMQ (from the test kit): the saga through choreo against hand-written lapin code
//! with the same persistence, publisher confirms, prefetch and manual acks, on the shared
//! topology (every service's queue takes every event, as choreo's did before it routed by
//! type) and as a point-to-point chain.

use std::sync::Arc;
use std::time::Instant;

use choreo::rabbitmq::{RabbitMqConfig, RabbitMqTransport};
use choreo::{Transport, TransportUrl};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::broker::Compared;
use crate::events::{Probe, EVENTS_PER_SAGA};
use crate::raw::{react, RawEvent};
use crate::report::Run;
use crate::topology::{Topology, SERVICES};

/// choreo, then (with `monitored`) choreo with the saga console's monitor beside it, then
/// the hand-written baselines, on one broker.
pub(crate) async fn compare(
    sagas: usize,
    window: usize,
    starters: usize,
    monitored: bool,
) -> Compared {
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
            starters,
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
                starters,
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
    let raw = baseline(
        &config,
        Topology::Shared("bench.rabbitmq.raw".to_owned()),
        sagas,
        window,
        starters,
    )
    .await;
    let chain = baseline(
        &config,
        Topology::Chain("bench.rabbitmq.chain".to_owned()),
        sagas,
        window,
        starters,
    )
    .await;
    Compared {
        choreo,
        raw,
        chain,
        monitored,
        notes: Vec::new(),
    }
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

/// Topics no service consumes: the chain's terminal event's, read by whoever started the
/// saga. They get a durable queue each, so that the broker stores their events as a Kafka
/// topic stores them.
fn unconsumed(topology: &Topology) -> Vec<String> {
    let inputs: Vec<String> = SERVICES
        .iter()
        .map(|service| topology.input(service))
        .collect();
    topology
        .topics()
        .into_iter()
        .filter(|topic| !inputs.contains(topic))
        .collect()
}

/// A durable queue named `queue`, bound to the exchange by `topic`.
async fn declare(channel: &Channel, exchange: &str, queue: &str, topic: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(ShortString::from(queue), durable, FieldTable::default())
        .await
        .expect("the queue");
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(topic),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the binding");
}

/// The hand-written services on `topology`: one publishing channel with confirms, a
/// connection and a queue per service.
async fn baseline(
    config: &RabbitMqConfig,
    topology: Topology,
    sagas: usize,
    window: usize,
    starters: usize,
) -> Run {
    let (_publisher_connection, publisher) = channel(config).await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let unconsumed = unconsumed(&topology);
    for topic in &unconsumed {
        declare(&publisher, &config.exchange, topic, topic).await;
    }
    let probe = Probe::new(window, false, None);
    let mut services = Vec::new();
    for service in SERVICES {
        let (connection, channel) = channel(config).await;
        let input = topology.input(service);
        let queue = format!("{}:{input}", topology.group(service));
        declare(&channel, &config.exchange, &queue, &input).await;
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
            topology.clone(),
            Arc::clone(&probe),
        ));
        services.push((connection, task));
    }

    let started = Instant::now();
    let start = {
        let (probe, publisher, exchange) = (
            Arc::clone(&probe),
            publisher.clone(),
            config.exchange.clone(),
        );
        let topology = topology.clone();
        move |n| {
            let first = RawEvent::first(probe.payload(n));
            let topic = topology.output(&first.event_type);
            let (publisher, exchange) = (publisher.clone(), exchange.clone());
            async move { publish(&publisher, &exchange, &topic, &first).await }
        }
    };
    crate::events::start_from(&probe, sagas, starters, start).await;
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    for (_connection, task) in services {
        task.abort();
    }
    // Nobody reads it: gone with the run, rather than growing run after run on a broker
    // that outlives it.
    for topic in &unconsumed {
        let _ = publisher
            .queue_delete(
                ShortString::from(topic.as_str()),
                QueueDeleteOptions::default(),
            )
            .await;
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

/// One service: take deliveries up to the prefetch, publish the next event where `topology`
/// sends it, ack each delivery once its publish is confirmed.
async fn run_service(
    service: &'static str,
    mut consumer: lapin::Consumer,
    publisher: Channel,
    exchange: String,
    topology: Topology,
    probe: Arc<Probe>,
) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let delivery = delivery.expect("the consumer runs").expect("a delivery");
                let event: RawEvent = serde_json::from_slice(&delivery.data).expect("JSON");
                let next = react(service, &event, &probe)
                    .map(|next| (topology.output(&next.event_type), next));
                let (publisher, exchange) = (publisher.clone(), exchange.clone());
                in_flight.push_back(async move {
                    if let Some((topic, next)) = next {
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

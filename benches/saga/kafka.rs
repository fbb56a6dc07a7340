//! Kafka (tansu from the test kit): the saga through choreo against hand-written rdkafka
//! pipelines (consume, produce the next event, commit) with the transport's own settings, on
//! choreo's topology (the shared one: every service reads every event) and as a
//! point-to-point chain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo::kafka::{KafkaConfig, KafkaTransport};
use choreo::{Transport, TransportUrl};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use tokio::sync::Semaphore;

use crate::broker::Compared;
use crate::events::{Probe, EVENTS_PER_SAGA};
use crate::raw::{react, RawEvent};
use crate::report::Run;
use crate::topology::{Topology, SERVICES};

/// Deliveries a raw consumer works on at once, like choreo's default concurrency.
const IN_FLIGHT: usize = 256;

/// choreo, then (with `monitored`) choreo with the saga console's monitor beside it, then
/// the hand-written baselines, on one broker.
pub(crate) async fn compare(sagas: usize, window: usize, monitored: bool) -> Compared {
    let broker = choreo_testkit::KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = format!(
        "{}?session.timeout.ms=2000&rdkafka.fetch.wait.max.ms=20",
        broker.url()
    );
    let transport: Arc<dyn Transport> = Arc::new(
        KafkaTransport::connect(&TransportUrl::parse(&url).expect("a Kafka URL"))
            .await
            .expect("Kafka is up"),
    );
    let choreo = crate::runtime::play(
        Arc::clone(&transport),
        "bench.kafka.choreo",
        crate::runtime::Setup {
            store: "memory://bench.kafka.{service}",
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
            "bench.kafka.monitored",
            crate::runtime::Setup {
                store: "memory://bench.kafka.monitored.{service}",
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
    let config = KafkaConfig::from_url(&TransportUrl::parse(&url).expect("a Kafka URL"))
        .expect("valid options");
    let raw = baseline(
        &config,
        Topology::Shared("bench.kafka.raw".to_owned()),
        sagas,
        window,
    )
    .await;
    let chain = baseline(
        &config,
        Topology::Chain("bench.kafka.chain".to_owned()),
        sagas,
        window,
    )
    .await;
    Compared {
        choreo,
        raw,
        chain,
        monitored,
    }
}

/// The hand-written services on `topology`: one producer, a consumer group per service.
async fn baseline(config: &KafkaConfig, topology: Topology, sagas: usize, window: usize) -> Run {
    let admin: AdminClient<DefaultClientContext> =
        config.producer().create().expect("an admin client");
    let topics = topology.topics();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await
        .expect("the topics are created");
    let producer: FutureProducer = config.producer().create().expect("a producer");
    let probe = Probe::new(window, false, None);
    let joined = Arc::new(Semaphore::new(0));
    let mut tasks = Vec::new();
    for service in SERVICES {
        let consumer: StreamConsumer = config
            .consumer(&topology.group(service))
            .create()
            .expect("a consumer");
        consumer
            .subscribe(&[&topology.input(service)])
            .expect("subscribed");
        tasks.push(tokio::spawn(run_service(
            service,
            consumer,
            producer.clone(),
            topology.clone(),
            config.commit_interval,
            Arc::clone(&probe),
            Arc::clone(&joined),
        )));
    }
    joined.acquire_many(3).await.expect("open").forget();

    let started = Instant::now();
    for n in 0..sagas {
        probe.admit().await;
        let first = RawEvent::first(probe.payload(n as u64));
        send(&producer, &topology.output(&first.event_type), &first).await;
    }
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    Run::new(sagas * EVENTS_PER_SAGA, elapsed, Vec::new())
}

async fn send(producer: &FutureProducer, topic: &str, event: &RawEvent) {
    let key = event.saga_id.to_string();
    let payload = serde_json::to_vec(event).expect("encodes");
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload),
            Timeout::Never,
        )
        .await
        .expect("Kafka accepts the event");
}

/// One service: consume its input, decode, produce the next event where `topology` sends it,
/// store the offset once it is delivered (in order), commit stored offsets at the
/// transport's cadence.
async fn run_service(
    service: &'static str,
    consumer: StreamConsumer,
    producer: FutureProducer,
    topology: Topology,
    commit_interval: Duration,
    probe: Arc<Probe>,
    joined: Arc<Semaphore>,
) {
    let input = topology.input(service);
    let mut in_flight = FuturesOrdered::new();
    let mut commit = tokio::time::interval(commit_interval);
    let mut check = tokio::time::interval(Duration::from_millis(20));
    let mut has_joined = false;
    loop {
        tokio::select! {
            message = consumer.recv(), if in_flight.len() < IN_FLIGHT => {
                let message = message.expect("a message");
                let (partition, offset) = (message.partition(), message.offset());
                let event: RawEvent =
                    serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON");
                let next = react(service, &event, &probe)
                    .map(|next| (topology.output(&next.event_type), next));
                let producer = producer.clone();
                in_flight.push_back(async move {
                    if let Some((topic, next)) = next {
                        send(&producer, &topic, &next).await;
                    }
                    (partition, offset)
                });
            }
            Some((partition, offset)) = in_flight.next() => {
                consumer
                    .store_offset(&input, partition, offset)
                    .expect("the offset is stored");
            }
            _ = commit.tick() => {
                let _ = consumer.commit_consumer_state(CommitMode::Async);
            }
            _ = check.tick(), if !has_joined => {
                if consumer.assignment().is_ok_and(|assigned| assigned.count() > 0) {
                    has_joined = true;
                    joined.add_permits(1);
                }
            }
        }
    }
}

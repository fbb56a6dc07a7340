//! Kafka (tansu from the test kit): the saga through choreo against hand-written rdkafka
//! pipelines (consume, produce the next event, commit) with the transport's own settings, on
//! choreo's topology (the shared one: every service reads every event) and as a
//! point-to-point chain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
use crate::report::{percentile, Run};
use crate::topology::{Topology, SERVICES};

/// Deliveries a raw consumer works on at once, like choreo's default concurrency.
const IN_FLIGHT: usize = 256;

/// choreo, then (with `monitored`) choreo with the saga console's monitor beside it, then
/// the hand-written baselines, on one broker; `options` are added to every client's URL.
pub(crate) async fn compare(
    sagas: usize,
    window: usize,
    starters: usize,
    monitored: bool,
    options: &str,
) -> Compared {
    let broker = choreo_testkit::KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut url = format!(
        "{}?session.timeout.ms=2000&rdkafka.fetch.wait.max.ms=20",
        broker.url()
    );
    if !options.is_empty() {
        url = format!("{url}&{}", options.trim_start_matches(['?', '&']));
    }
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
            "bench.kafka.monitored",
            crate::runtime::Setup {
                store: "memory://bench.kafka.monitored.{service}",
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
    let config = KafkaConfig::from_url(&TransportUrl::parse(&url).expect("a Kafka URL"))
        .expect("valid options");
    let (raw, raw_hops) = baseline(
        &config,
        Topology::Shared("bench.kafka.raw".to_owned()),
        sagas,
        window,
        starters,
    )
    .await;
    let (chain, chain_hops) = baseline(
        &config,
        Topology::Chain("bench.kafka.chain".to_owned()),
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
        notes: vec![
            format!("kafka raw baseline, where a hop's time goes: {raw_hops}"),
            format!("kafka point-to-point chain, where a hop's time goes: {chain_hops}"),
        ],
    }
}

/// Where a hand-written hop's time goes: from the call to produce to the broker's
/// acknowledgement (the producer's linger and the round trip), and from the record's
/// creation to its consumption (that, plus waiting for a fetch to bring it).
#[derive(Default)]
struct Hops {
    produced_us: Mutex<Vec<u64>>,
    consumed_ms: Mutex<Vec<u64>>,
}

impl Hops {
    fn produced(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.produced_us.lock().expect("not poisoned").push(micros);
    }

    fn consumed(&self, created_ms: Option<i64>) {
        let Some(created) = created_ms.and_then(|ms| u64::try_from(ms).ok()) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let waited = now.saturating_sub(created);
        self.consumed_ms.lock().expect("not poisoned").push(waited);
    }

    fn summary(&self) -> String {
        let quantiles = |samples: &Mutex<Vec<u64>>| {
            let mut samples = samples.lock().expect("not poisoned").clone();
            samples.sort_unstable();
            [50.0, 99.0].map(|p| percentile(&samples, p).unwrap_or(0))
        };
        let [produced_50, produced_99] = quantiles(&self.produced_us);
        let [consumed_50, consumed_99] = quantiles(&self.consumed_ms);
        format!(
            "produce until acknowledged p50 {:.1} ms, p99 {:.1} ms; created until consumed \
             p50 {consumed_50} ms, p99 {consumed_99} ms",
            produced_50 as f64 / 1000.0,
            produced_99 as f64 / 1000.0,
        )
    }
}

/// The hand-written services on `topology`: one producer, a consumer group per service.
async fn baseline(
    config: &KafkaConfig,
    topology: Topology,
    sagas: usize,
    window: usize,
    starters: usize,
) -> (Run, String) {
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
    let sender = Sender {
        producer: config.producer().create().expect("a producer"),
        hops: Arc::new(Hops::default()),
    };
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
            sender.clone(),
            topology.clone(),
            config.commit_interval,
            Arc::clone(&probe),
            Arc::clone(&joined),
        )));
    }
    joined.acquire_many(3).await.expect("open").forget();

    let started = Instant::now();
    let start = {
        let (probe, sender) = (Arc::clone(&probe), sender.clone());
        move |n| {
            let first = RawEvent::first(probe.payload(n));
            let topic = topology.output(&first.event_type);
            let sender = sender.clone();
            async move { sender.send(&topic, &first).await }
        }
    };
    crate::events::start_from(&probe, sagas, starters, start).await;
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    let run = Run::new(sagas * EVENTS_PER_SAGA, elapsed, Vec::new());
    (run, sender.hops.summary())
}

/// The baseline's producer, timing each produce until acknowledged.
#[derive(Clone)]
struct Sender {
    producer: FutureProducer,
    hops: Arc<Hops>,
}

impl Sender {
    async fn send(&self, topic: &str, event: &RawEvent) {
        let key = event.saga_id.to_string();
        let payload = serde_json::to_vec(event).expect("encodes");
        let began = Instant::now();
        self.producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&payload),
                Timeout::Never,
            )
            .await
            .expect("Kafka accepts the event");
        self.hops.produced(began.elapsed());
    }
}

/// One service: consume its input, decode, produce the next event where `topology` sends it,
/// store the offset once it is delivered (in order), commit stored offsets at the
/// transport's cadence.
async fn run_service(
    service: &'static str,
    consumer: StreamConsumer,
    sender: Sender,
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
                sender.hops.consumed(message.timestamp().to_millis());
                let event: RawEvent =
                    serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON");
                let next = react(service, &event, &probe)
                    .map(|next| (topology.output(&next.event_type), next));
                let sender = sender.clone();
                in_flight.push_back(async move {
                    if let Some((topic, next)) = next {
                        sender.send(&topic, &next).await;
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

//! The transport conformance suite (docs/testing.md) on RabbitMQ, against a broker the test kit
//! starts, including a real broker restart.
#![cfg(feature = "rabbitmq")]

use std::sync::Arc;
use std::time::Duration;

use choreo::rabbitmq::RabbitMqTransport;
use choreo::{RawMessage, Transport, TransportUrl};
use choreo_testkit::conformance::Subject;
use choreo_testkit::RabbitMqBroker;

struct RabbitMq {
    broker: RabbitMqBroker,
}

impl RabbitMq {
    async fn transport(&self) -> RabbitMqTransport {
        let url =
            TransportUrl::parse(&format!("{}?reconnect.max.ms=1000", self.broker.url())).unwrap();
        RabbitMqTransport::connect(&url).await.unwrap()
    }
}

#[choreo::async_trait]
impl Subject for RabbitMq {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.transport().await)
    }

    async fn publish_raw(&self, topic: &str, _key: Option<&str>, message: RawMessage) {
        self.transport()
            .await
            .publish_raw(topic, &message)
            .await
            .unwrap();
    }

    async fn restart_broker(&self) -> Option<Result<(), String>> {
        Some(
            self.broker
                .restart()
                .await
                .map_err(|error| error.to_string()),
        )
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn rabbitmq() -> RabbitMq {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RabbitMq {
        broker: RabbitMqBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}")),
    }
}

choreo_testkit::conformance_tests!(rabbitmq);

/// A message in the form choreo 0.1 wrote on RabbitMQ (the Kafka binding's `ce_` headers and a
/// `content-type` header, no `content_type` property) still decodes, so that services upgraded
/// one at a time keep understanding each other; what choreo writes now is the RabbitMQ
/// binding's form, read back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_the_older_header_form_still_decodes() {
    use choreo::{Deadline, Envelope, EventId, SagaId, SagaKind, TraceContext};
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let subject = rabbitmq().await;
    let transport = subject.transport().await;
    let topic = format!("older.{}", uuid::Uuid::now_v7());
    let mut subscription = transport
        .subscribe("older-reader", std::slice::from_ref(&topic))
        .await
        .unwrap();
    let now = std::time::SystemTime::now();
    let envelope = |event_type: &str| Envelope {
        id: EventId::new(),
        source: "payments".into(),
        event_type: event_type.into(),
        time: now,
        saga_id: SagaId::new(),
        causation_id: Some(EventId::new()),
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(30)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: serde_json::value::to_raw_value(&serde_json::json!({"cents": 700})).unwrap(),
        saga_data: Default::default(),
    };
    let older = envelope("payments.CreditReserved.v1");
    let message = older.to_binary();
    assert!(message.headers.iter().any(|(name, _)| name == "ce_id"));
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.to_vec())),
        );
    }
    let connection = Connection::connect(subject.broker.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "choreo.events".into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            &message.body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let current = envelope("payments.CreditCapped.v1");
    transport.publish(&topic, current.clone()).await.unwrap();

    for expected in [older, current] {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("a delivery within 30 s")
            .unwrap();
        assert_eq!(Envelope::decode(&delivery.message).unwrap(), expected);
        delivery.ack().await.unwrap();
    }
}

/// An observer (a saga log) receives every event without taking any from the services'
/// groups, and its queue goes when it stops, so nothing keeps filling after it; a group's
/// queue stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_queue_goes_with_the_observer() {
    use choreo::{Deadline, Envelope, EventId, SagaId, SagaKind, TraceContext};
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    use lapin::{Connection, ConnectionProperties};

    let subject = rabbitmq().await;
    let transport = subject.transport().await;
    let topic = format!("observed.{}", uuid::Uuid::now_v7());
    let topics = std::slice::from_ref(&topic);
    let mut group = transport.subscribe("payments", topics).await.unwrap();
    let mut observer = transport.observe("log", topics).await.unwrap();
    let now = std::time::SystemTime::now();
    let event = Envelope {
        id: EventId::new(),
        source: "orders".into(),
        event_type: "orders.OrderPlaced.v1".into(),
        time: now,
        saga_id: SagaId::new(),
        causation_id: None,
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(30)),
        kind: SagaKind::Start,
        trace: TraceContext::new_root(),
        data: serde_json::value::to_raw_value(&serde_json::json!({"order_id": 1})).unwrap(),
        saga_data: Default::default(),
    };
    transport.publish(&topic, event.clone()).await.unwrap();
    for subscription in [&mut observer, &mut group] {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
            .await
            .expect("a delivery within 30 s")
            .unwrap();
        assert_eq!(Envelope::decode(&delivery.message).unwrap(), event);
        delivery.ack().await.unwrap();
    }

    drop(observer);
    let connection = Connection::connect(subject.broker.url(), ConnectionProperties::default())
        .await
        .unwrap();
    // A passive declaration fails (and closes its channel) once the queue is gone.
    let exists = |queue: String| {
        let connection = &connection;
        async move {
            let channel = connection.create_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok()
        }
    };
    let gone_by = tokio::time::Instant::now() + Duration::from_secs(30);
    while exists(format!("log:{topic}")).await {
        assert!(
            tokio::time::Instant::now() < gone_by,
            "the observer's queue stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exists(format!("payments:{topic}")).await,
        "a group's queue stays"
    );
    drop(group);
}

/// Events are routed by `<topic>.<type>`: a service's group receives the types it acts on and
/// what publishers other than choreo send with the bare topic, an event of a type nobody
/// binds is accepted and dropped, and a reader of every type (an observer, a plain group)
/// gets each event once and none of the topic's dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_routed_by_type_to_the_groups_that_act_on_them() {
    use choreo::{Deadline, Envelope, EventId, SagaId, SagaKind, TraceContext};

    let subject = rabbitmq().await;
    let transport = subject.transport().await;
    let topic = format!("routed.{}", uuid::Uuid::now_v7());
    let topics = std::slice::from_ref(&topic);
    let saga_id = SagaId::new();
    let now = std::time::SystemTime::now();
    let event = |event_type: &str| Envelope {
        id: EventId::new(),
        source: "orders".into(),
        event_type: event_type.into(),
        time: now,
        saga_id,
        causation_id: None,
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(30)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: serde_json::value::to_raw_value(&serde_json::json!({"order_id": 1})).unwrap(),
        saga_data: Default::default(),
    };
    let placed = "orders.OrderPlaced.v1";
    let mut payments = transport
        .subscribe_to_types("payments", topics, &[placed.to_owned()])
        .await
        .unwrap();
    // Only the payments queue is on the topic, and it does not take this type.
    let unheard = event("orders.OrderNoted.v1");
    transport.publish(&topic, unheard).await.unwrap();

    let mut observer = transport.observe("log", topics).await.unwrap();
    let mut audit = transport.subscribe("audit", topics).await.unwrap();
    let first = event(placed);
    let other = event("orders.OrderCancelled.v1");
    let foreign = event("legacy.OrderImported.v1");
    let last = event(placed);
    transport.publish(&topic, first.clone()).await.unwrap();
    transport.publish(&topic, other.clone()).await.unwrap();
    transport
        .publish_raw(&topic, &foreign.to_binary())
        .await
        .unwrap();
    transport
        .dead_letter(&topic, foreign.to_binary(), "rejected by the test")
        .await
        .unwrap();
    transport.publish(&topic, last.clone()).await.unwrap();

    // One saga's events come in order: the last one after the others proves what did not come.
    let every = [&first, &other, &foreign, &last];
    for (subscription, expected) in [
        (&mut payments, vec![&first, &foreign, &last]),
        (&mut observer, every.to_vec()),
        (&mut audit, every.to_vec()),
    ] {
        let mut received = Vec::new();
        for _ in &expected {
            let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.next())
                .await
                .expect("a delivery within 30 s")
                .unwrap();
            assert_eq!(delivery.topic, topic);
            received.push(Envelope::decode(&delivery.message).unwrap());
            delivery.ack().await.unwrap();
        }
        let expected: Vec<Envelope> = expected.into_iter().cloned().collect();
        assert_eq!(received, expected);
    }
}

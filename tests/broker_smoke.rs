//! The broker kit starts real brokers through testcontainers, and plain rdkafka and lapin
//! clients can use them, including after a RabbitMQ restart (docs/testing.md).

use std::time::Duration;

use choreo_testkit::{KafkaBroker, RabbitMqBroker};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_from_the_kit_carries_a_message_for_rdkafka() {
    let kafka = KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(kafka.url().starts_with("kafka://"));
    let servers = kafka.bootstrap_servers();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let topic = format!("smoke.{}", uuid::Uuid::now_v7().simple());
    admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("saga-1")
                .payload("hello kafka"),
            PATIENCE,
        )
        .await
        .map_err(|(error, _)| error)
        .unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "smoke")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&partitions).unwrap();
    let message = tokio::time::timeout(PATIENCE, consumer.recv())
        .await
        .expect("a message within the patience")
        .unwrap();
    assert_eq!(message.key(), Some(&b"saga-1"[..]));
    assert_eq!(message.payload(), Some(&b"hello kafka"[..]));
}

async fn rabbitmq_round_trip(url: &str, queue: &str, body: &[u8]) -> Vec<u8> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            return message.delivery.data.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_from_the_kit_carries_a_message_for_lapin_before_and_after_a_restart() {
    let rabbit = RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(rabbit.url().starts_with("amqp://"));
    assert_eq!(
        rabbitmq_round_trip(rabbit.url(), "smoke", b"before").await,
        b"before"
    );

    rabbit
        .restart()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // Same URL: the kit keeps the host port across the restart.
    assert_eq!(
        rabbitmq_round_trip(rabbit.url(), "smoke", b"after").await,
        b"after"
    );
}

//! The transport conformance suite (docs/testing.md) on Kafka, against a broker the test kit
//! starts.
#![cfg(feature = "kafka")]

use std::sync::Arc;
use std::time::Duration;

use choreo::kafka::KafkaTransport;
use choreo::{RawMessage, Transport, TransportUrl};
use choreo_testkit::conformance::Subject;
use choreo_testkit::KafkaBroker;

struct Kafka {
    broker: KafkaBroker,
}

/// Small session timeouts: a consumer joins its group in about half of one.
pub fn test_url(broker: &KafkaBroker) -> String {
    format!(
        "{}?session.timeout.ms=6000&commit.interval.ms=100&message.timeout.ms=5000",
        broker.url()
    )
}

#[choreo::async_trait]
impl Subject for Kafka {
    async fn connect(&self) -> Arc<dyn Transport> {
        let url = TransportUrl::parse(&test_url(&self.broker)).unwrap();
        Arc::new(KafkaTransport::connect(&url).await.unwrap())
    }

    async fn publish_raw(&self, topic: &str, key: Option<&str>, message: RawMessage) {
        let url = TransportUrl::parse(&test_url(&self.broker)).unwrap();
        let transport = KafkaTransport::connect(&url).await.unwrap();
        transport.publish_raw(topic, key, &message).await.unwrap();
    }

    /// An outage the clients must ride out: the broker freezes for a few seconds. (tansu,
    /// the Kafka-protocol broker the CI image holds, keeps its data in memory only, so a
    /// stopped container would come back empty; pausing keeps it.)
    async fn restart_broker(&self) -> Option<Result<(), String>> {
        let outage = async {
            self.broker.pause().await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            self.broker.unpause().await
        };
        Some(outage.await.map_err(|error| error.to_string()))
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn kafka() -> Kafka {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Kafka {
        broker: KafkaBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}")),
    }
}

choreo_testkit::conformance_tests!(kafka);

/// A service started again in the same process while its last instance's consumer is still
/// leaving the group (killed as the broker froze) consumes: its consumer joins the group once
/// the other has left, and is assigned the partitions. (Should the other leave while it
/// joins, tansu 0.6, the test kit's broker, would keep the leaver as the group's leader and
/// never assign the partitions again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_started_while_the_last_one_leaves_its_group_is_assigned_and_consumes() {
    let subject = kafka().await;
    let transport = subject.connect().await;
    let topic = format!("restarted-{}", uuid::Uuid::new_v4());
    let message = |body: &str| RawMessage {
        headers: choreo::Headers::new(),
        body: body.as_bytes().to_vec(),
    };
    let mut leaving = transport
        .subscribe("restarted", std::slice::from_ref(&topic))
        .await
        .unwrap();
    subject
        .publish_raw(&topic, Some("k"), message("first"))
        .await;
    let first = tokio::time::timeout(subject.patience(), leaving.next())
        .await
        .expect("the first consumer receives")
        .unwrap();
    assert_eq!(first.message.body, b"first");
    first.ack().await.unwrap();

    // Killed while the broker is frozen: its last commit and its leave wait for the broker,
    // and the next consumer of the group starts meanwhile.
    subject.broker.pause().await.unwrap();
    drop(leaving);
    let joining = tokio::spawn({
        let transport = Arc::clone(&transport);
        let topic = topic.clone();
        async move { transport.subscribe("restarted", &[topic]).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    subject.broker.unpause().await.unwrap();
    let mut joined = joining.await.unwrap().unwrap();

    subject
        .publish_raw(&topic, Some("k"), message("second"))
        .await;
    let second = tokio::time::timeout(subject.patience(), joined.next())
        .await
        .expect("the restarted consumer is assigned the partitions and receives")
        .unwrap();
    assert_eq!(
        second.message.body, b"second",
        "the first message was committed before the leave"
    );
    second.ack().await.unwrap();
}

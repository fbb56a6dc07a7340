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

//! The transport conformance suite (DESIGN §7) on RabbitMQ, against a broker the test kit
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

#[async_trait::async_trait]
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

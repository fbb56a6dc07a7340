//! Brokers for tests: started in a container through testcontainers, or found through an
//! environment variable.

use std::fmt;
use std::time::Duration;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::probe;

/// What the kit knows about one kind of broker.
struct Spec {
    name: &'static str,
    /// Use this running broker instead of a container.
    url_var: &'static str,
    /// The image to start, `name:tag`.
    image_var: &'static str,
    /// Arguments replacing the image's command; `{port}` becomes the host port.
    command_var: &'static str,
    default_image: &'static str,
    container_port: u16,
    url_example: &'static str,
    /// Container environment; `{port}` becomes the host port.
    env: &'static [(&'static str, &'static str)],
    url: fn(u16) -> String,
    probe: Probe,
}

#[derive(Clone, Copy)]
enum Probe {
    Kafka,
    Amqp,
}

const KAFKA: Spec = Spec {
    name: "Kafka",
    url_var: "CHOREO_KAFKA_URL",
    image_var: "CHOREO_KAFKA_IMAGE",
    command_var: "CHOREO_KAFKA_COMMAND",
    default_image: "apache/kafka:3.9.1",
    container_port: 9092,
    url_example: "kafka://localhost:9092",
    // Both the Apache image's settings and tansu's: each broker ignores the other's.
    env: &[
        ("KAFKA_NODE_ID", "1"),
        ("KAFKA_PROCESS_ROLES", "broker,controller"),
        ("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093"),
        ("KAFKA_ADVERTISED_LISTENERS", "PLAINTEXT://localhost:{port}"),
        ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
        (
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ),
        ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093"),
        ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
        ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
        ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
        ("LISTENER_URL", "tcp://0.0.0.0:9092"),
        ("ADVERTISED_LISTENER_URL", "tcp://localhost:{port}"),
    ],
    url: |port| format!("kafka://localhost:{port}"),
    probe: Probe::Kafka,
};

const RABBITMQ: Spec = Spec {
    name: "RabbitMQ",
    url_var: "CHOREO_AMQP_URL",
    image_var: "CHOREO_RABBITMQ_IMAGE",
    command_var: "CHOREO_RABBITMQ_COMMAND",
    default_image: "rabbitmq:3-management",
    container_port: 5672,
    url_example: "amqp://guest:guest@localhost:5672/%2f",
    env: &[],
    url: |port| format!("amqp://guest:guest@localhost:{port}/%2f"),
    probe: Probe::Amqp,
};

/// How long a broker may take to answer after its container started
/// (`CHOREO_BROKER_START_TIMEOUT`, seconds).
fn start_timeout() -> Duration {
    std::env::var("CHOREO_BROKER_START_TIMEOUT")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs)
}

/// Why a test broker is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The container could not be started.
    #[error(
        "cannot start a {broker} container from image `{image}`: {detail}\n\
         Is Docker running and reachable (DOCKER_HOST)? Is the image present or pullable? \
         Choose another image with {image_var}=name:tag, or test against a running broker \
         with {url_var}={example}"
    )]
    Start {
        /// Kafka or RabbitMQ.
        broker: &'static str,
        /// The image.
        image: String,
        /// What Docker said.
        detail: String,
        /// The variable naming the image.
        image_var: &'static str,
        /// The variable naming a running broker.
        url_var: &'static str,
        /// An example URL.
        example: &'static str,
    },
    /// The broker did not answer its protocol in time.
    #[error(
        "the {broker} broker at {address} did not answer within {waited:?}; \
         raise CHOREO_BROKER_START_TIMEOUT if the machine is slow{logs}"
    )]
    NotReady {
        /// Kafka or RabbitMQ.
        broker: &'static str,
        /// Where it was probed.
        address: String,
        /// How long.
        waited: Duration,
        /// The container's output, if any.
        logs: String,
    },
    /// The broker was given by URL: the kit does not own it.
    #[error("the {broker} broker was given by {url_var}; the kit cannot {action} it")]
    External {
        /// Kafka or RabbitMQ.
        broker: &'static str,
        /// The variable.
        url_var: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// Docker refused to stop, start, pause or unpause the container.
    #[error("cannot {action} the {broker} container: {detail}")]
    Control {
        /// Kafka or RabbitMQ.
        broker: &'static str,
        /// What was asked.
        action: &'static str,
        /// What Docker said.
        detail: String,
    },
}

/// A running broker for tests: a container the kit started (removed when dropped), or a
/// broker named by an environment variable.
pub struct Broker {
    spec: &'static Spec,
    url: String,
    address: String,
    container: Option<ContainerAsync<GenericImage>>,
}

impl Broker {
    async fn start(spec: &'static Spec) -> Result<Self, BrokerError> {
        if let Ok(url) = std::env::var(spec.url_var) {
            let address = address_of(&url);
            return Ok(Self {
                spec,
                url,
                address,
                container: None,
            });
        }
        let image = std::env::var(spec.image_var).unwrap_or_else(|_| spec.default_image.to_owned());
        let start_error = |detail: String| BrokerError::Start {
            broker: spec.name,
            image: image.clone(),
            detail,
            image_var: spec.image_var,
            url_var: spec.url_var,
            example: spec.url_example,
        };
        // A fixed host port, so clients reconnect to the same address after a restart.
        let port = free_port().map_err(|error| start_error(format!("no free port: {error}")))?;
        let (name, tag) = split_image(&image);
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(spec.container_port.tcp())
            .with_wait_for(WaitFor::Nothing)
            .with_mapped_port(port, spec.container_port.tcp());
        for (key, value) in spec.env {
            request = request.with_env_var(*key, value.replace("{port}", &port.to_string()));
        }
        if let Ok(command) = std::env::var(spec.command_var) {
            let command = command.replace("{port}", &port.to_string());
            request = request.with_cmd(
                command
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        }
        let container = request
            .start()
            .await
            .map_err(|error| start_error(error.to_string()))?;
        let broker = Self {
            spec,
            url: (spec.url)(port),
            address: format!("127.0.0.1:{port}"),
            container: Some(container),
        };
        broker.wait_until_ready().await?;
        tracing::info!(broker = spec.name, url = %broker.url, %image, "test broker ready");
        Ok(broker)
    }

    /// The URL to give `choreo::connect`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port` of the broker.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Stops the container; its port stays reserved for [`start_again`](Self::start_again).
    pub async fn stop(&self) -> Result<(), BrokerError> {
        let container = self.owned("stop")?;
        container
            .stop()
            .await
            .map_err(|error| self.control("stop", error))
    }

    /// Starts a stopped container again on the same port and waits until it answers.
    pub async fn start_again(&self) -> Result<(), BrokerError> {
        let container = self.owned("start")?;
        container
            .start()
            .await
            .map_err(|error| self.control("start", error))?;
        self.wait_until_ready().await
    }

    /// Stops the container and starts it again.
    pub async fn restart(&self) -> Result<(), BrokerError> {
        self.stop().await?;
        self.start_again().await
    }

    /// Freezes the broker's processes: connections hang instead of failing.
    pub async fn pause(&self) -> Result<(), BrokerError> {
        let container = self.owned("pause")?;
        container
            .pause()
            .await
            .map_err(|error| self.control("pause", error))
    }

    /// Thaws a paused broker and waits until it answers.
    pub async fn unpause(&self) -> Result<(), BrokerError> {
        let container = self.owned("unpause")?;
        container
            .unpause()
            .await
            .map_err(|error| self.control("unpause", error))?;
        self.wait_until_ready().await
    }

    async fn wait_until_ready(&self) -> Result<(), BrokerError> {
        let waited = start_timeout();
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let answers = match self.spec.probe {
                Probe::Kafka => probe::kafka_answers(&self.address).await,
                Probe::Amqp => probe::amqp_answers(&self.address).await,
            };
            if answers {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrokerError::NotReady {
                    broker: self.spec.name,
                    address: self.address.clone(),
                    waited,
                    logs: self.logs().await,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn logs(&self) -> String {
        let Some(container) = &self.container else {
            return String::new();
        };
        let stdout = container.stdout_to_vec().await.unwrap_or_default();
        let stderr = container.stderr_to_vec().await.unwrap_or_default();
        let tail = |bytes: Vec<u8>| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let start = text.len().saturating_sub(4_000);
            text.get(start..).unwrap_or_default().to_owned()
        };
        format!(
            "\n--- container stdout (tail) ---\n{}\n--- container stderr (tail) ---\n{}",
            tail(stdout),
            tail(stderr)
        )
    }

    fn owned(&self, action: &'static str) -> Result<&ContainerAsync<GenericImage>, BrokerError> {
        self.container.as_ref().ok_or(BrokerError::External {
            broker: self.spec.name,
            url_var: self.spec.url_var,
            action,
        })
    }

    fn control(&self, action: &'static str, error: impl fmt::Display) -> BrokerError {
        BrokerError::Control {
            broker: self.spec.name,
            action,
            detail: error.to_string(),
        }
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("broker", &self.spec.name)
            .field("address", &self.address)
            .field("container", &self.container.as_ref().map(|c| c.id()))
            .finish()
    }
}

/// A Kafka-protocol broker for tests.
///
/// Starts `apache/kafka:3.9.1` unless `CHOREO_KAFKA_IMAGE` names another image (a tansu image
/// works too: the kit sets both brokers' listener settings); `CHOREO_KAFKA_COMMAND` replaces
/// the image's command. With `CHOREO_KAFKA_URL` set, no container starts and that broker is
/// used.
#[derive(Debug)]
pub struct KafkaBroker(Broker);

impl KafkaBroker {
    /// Starts the broker and waits until it answers the Kafka protocol.
    pub async fn start() -> Result<Self, BrokerError> {
        Broker::start(&KAFKA).await.map(Self)
    }

    /// `host:port`, as `bootstrap.servers` wants it.
    pub fn bootstrap_servers(&self) -> &str {
        self.0.address()
    }
}

impl std::ops::Deref for KafkaBroker {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.0
    }
}

/// A RabbitMQ broker for tests.
///
/// Starts `rabbitmq:3-management` unless `CHOREO_RABBITMQ_IMAGE` names another image;
/// `CHOREO_RABBITMQ_COMMAND` replaces the image's command. With `CHOREO_AMQP_URL` set, no
/// container starts and that broker is used. The URL logs in as `guest`.
#[derive(Debug)]
pub struct RabbitMqBroker(Broker);

impl RabbitMqBroker {
    /// Starts the broker and waits until it answers AMQP.
    pub async fn start() -> Result<Self, BrokerError> {
        Broker::start(&RABBITMQ).await.map(Self)
    }
}

impl std::ops::Deref for RabbitMqBroker {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.0
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `name` and `tag` of `name[:tag]`; a `:` inside a registry host is not a tag.
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// `host:port` of a broker URL (its first host), for the readiness probe.
fn address_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority
        .rsplit_once('@')
        .map_or(authority, |(_, hosts)| hosts);
    hosts.split(',').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_at_the_tag_only() {
        assert_eq!(
            split_image("rabbitmq:3-management"),
            ("rabbitmq", "3-management")
        );
        assert_eq!(split_image("apache/kafka"), ("apache/kafka", "latest"));
        assert_eq!(
            split_image("registry:5000/kafka"),
            ("registry:5000/kafka", "latest")
        );
        assert_eq!(
            split_image("registry:5000/kafka:1"),
            ("registry:5000/kafka", "1")
        );
    }

    #[test]
    fn broker_addresses_come_from_the_first_host() {
        assert_eq!(address_of("kafka://k1:9092,k2:9092?x=1"), "k1:9092");
        assert_eq!(address_of("amqp://u:p@rabbit:5672/%2f"), "rabbit:5672");
    }
}

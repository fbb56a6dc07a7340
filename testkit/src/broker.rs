//! Brokers and databases for tests: started in a container through testcontainers, or found
//! through an environment variable.

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
    #[cfg(feature = "postgres")]
    Postgres,
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
        // Records of up to 16 MiB, as a cluster that takes large messages is set up (the
        // default is 1 MiB); tansu has no such limit.
        ("KAFKA_MESSAGE_MAX_BYTES", "16777216"),
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

/// The PostgreSQL superuser's password in a container the kit starts.
#[cfg(feature = "postgres")]
const POSTGRES_PASSWORD: &str = "choreo";

#[cfg(feature = "postgres")]
const POSTGRES: Spec = Spec {
    name: "PostgreSQL",
    url_var: "CHOREO_POSTGRES_URL",
    image_var: "CHOREO_POSTGRES_IMAGE",
    command_var: "CHOREO_POSTGRES_COMMAND",
    default_image: "postgres:15",
    container_port: 5432,
    url_example: "postgres://postgres:postgres@localhost:5432/postgres",
    env: &[
        ("POSTGRES_USER", "postgres"),
        ("POSTGRES_PASSWORD", POSTGRES_PASSWORD),
        ("POSTGRES_DB", "postgres"),
    ],
    url: |port| format!("postgres://postgres:{POSTGRES_PASSWORD}@localhost:{port}/postgres"),
    probe: Probe::Postgres,
};

/// How long a broker may take to answer after its container started
/// (`CHOREO_BROKER_START_TIMEOUT`, seconds).
fn start_timeout() -> Duration {
    std::env::var("CHOREO_BROKER_START_TIMEOUT")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(120), Duration::from_secs)
}

/// Why a test broker (or database server) is not available.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The container could not be started.
    #[error(
        "cannot start a {broker} container from image `{image}`: {detail}\n\
         Is Docker running and reachable (DOCKER_HOST)? Is the image present or pullable? \
         Choose another image with {image_var}=name:tag, or test against a running server \
         with {url_var}={example}"
    )]
    Start {
        /// Kafka, RabbitMQ or PostgreSQL.
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
        "{broker} at {address} did not answer within {waited:?}; \
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
    #[error("{broker} was given by {url_var}; the kit cannot {action} it")]
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
    /// The server is shared by every test of the process: no test may stop it.
    #[error(
        "the {broker} server is shared by every test of this process; the kit cannot \
         {action} it: start one of the test's own for that"
    )]
    Shared {
        /// PostgreSQL.
        broker: &'static str,
        /// What was asked.
        action: &'static str,
    },
    /// The server answered, but would not do what the kit asked of it (e.g. create a
    /// database).
    #[error("{broker} at {address} refused to {action}: {detail}")]
    Refused {
        /// PostgreSQL.
        broker: &'static str,
        /// Where it runs.
        address: String,
        /// What was asked.
        action: &'static str,
        /// What it said.
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
    /// The id of a container the kit started but this handle does not own (a shared one).
    shared: Option<String>,
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
                shared: None,
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
            shared: None,
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

    /// Runs `command` in the container, failing unless it exits with 0.
    async fn exec(&self, action: &'static str, command: &[&str]) -> Result<(), BrokerError> {
        use testcontainers::core::{CmdWaitFor, ExecCommand};

        let container = self.owned(action)?;
        let mut run = container
            .exec(
                ExecCommand::new(command.iter().copied())
                    .with_cmd_ready_condition(CmdWaitFor::exit()),
            )
            .await
            .map_err(|error| self.control(action, error))?;
        let code = run
            .exit_code()
            .await
            .map_err(|error| self.control(action, error))?;
        if code == Some(0) {
            return Ok(());
        }
        let stderr = run.stderr_to_vec().await.unwrap_or_default();
        Err(BrokerError::Refused {
            broker: self.spec.name,
            address: self.address.clone(),
            action,
            detail: format!(
                "exit code {code:?}: {}",
                String::from_utf8_lossy(&stderr).trim()
            ),
        })
    }

    async fn wait_until_ready(&self) -> Result<(), BrokerError> {
        let waited = start_timeout();
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let answers = match self.spec.probe {
                Probe::Kafka => probe::kafka_answers(&self.address).await,
                Probe::Amqp => probe::amqp_answers(&self.address).await,
                #[cfg(feature = "postgres")]
                Probe::Postgres => probe::postgres_answers(&self.address, "postgres").await,
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
        if self.shared.is_some() {
            return Err(BrokerError::Shared {
                broker: self.spec.name,
                action,
            });
        }
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
            .field(
                "container",
                &self
                    .container
                    .as_ref()
                    .map(|c| c.id())
                    .or(self.shared.as_deref()),
            )
            .field("shared", &self.shared.is_some())
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

    /// Adds a user with every permission on the vhost `/` (`rabbitmqctl add_user` and
    /// `set_permissions` in the container) and returns the URL that logs in as that user.
    ///
    /// The password never travels in clear to Docker: Docker's client logs its requests at
    /// `trace`, so a test that watches logs for the password would find it there. It goes
    /// octal-escaped and the container's shell decodes it; it may hold any character but NUL,
    /// and cannot end with a newline. A broker given by `CHOREO_AMQP_URL` is not the kit's to change
    /// ([`BrokerError::External`]).
    pub async fn add_user(&self, user: &str, password: &str) -> Result<String, BrokerError> {
        let quoted = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
        let escaped: String = password
            .bytes()
            .map(|byte| format!("\\{byte:03o}"))
            .collect();
        let script = format!(
            "rabbitmqctl add_user {user} \"$(printf '{escaped}')\" >/dev/null && \
             rabbitmqctl set_permissions -p / {user} '.*' '.*' '.*' >/dev/null",
            user = quoted(user),
        );
        self.0.exec("add a user to", &["sh", "-c", &script]).await?;
        let encode = |text: &str| {
            text.bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (byte as char).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect::<String>()
        };
        Ok(format!(
            "amqp://{}:{}@{}/%2f",
            encode(user),
            encode(password),
            self.address()
        ))
    }
}

impl std::ops::Deref for RabbitMqBroker {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.0
    }
}

/// A PostgreSQL server for store tests.
///
/// Starts `postgres:15` unless `CHOREO_POSTGRES_IMAGE` names another image (one that honours
/// `POSTGRES_USER`, `POSTGRES_PASSWORD` and `POSTGRES_DB` like the official one);
/// `CHOREO_POSTGRES_COMMAND` replaces the image's command (e.g. `-c fsync=off`). With
/// `CHOREO_POSTGRES_URL` set (a superuser's URL, or one of a role that may create
/// databases), no container starts and that server is used. The kit logs in as the
/// superuser `postgres`.
///
/// Tests usually share one server per test binary ([`shared`](Self::shared)) and each take
/// a database of their own ([`database`](Self::database)); a test that stops or pauses the
/// server [`start`](Self::start)s its own.
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PostgresServer(Broker);

#[cfg(feature = "postgres")]
impl PostgresServer {
    /// Starts a server of the test's own and waits until it answers PostgreSQL's protocol
    /// (its authentication request, not "the database system is starting up"). The
    /// container is removed when the handle is dropped; [`Broker::stop`],
    /// [`Broker::start_again`], [`Broker::pause`] and [`Broker::unpause`] control it.
    pub async fn start() -> Result<Self, BrokerError> {
        Broker::start(&POSTGRES).await.map(Self)
    }

    /// The server every test of this process shares, started on first use, or the one
    /// `CHOREO_POSTGRES_URL` names.
    ///
    /// Every `#[tokio::test]` has a runtime of its own, which ends with the test; the
    /// container is therefore started and kept on a thread of its own, with its own runtime,
    /// and tests only ever reach it over the network. It cannot be stopped or paused
    /// ([`BrokerError::Shared`]). Rust never drops statics, so the container is removed
    /// when the process exits by a watchdog process (`sh`, polling the test process, then
    /// `docker rm -f -v`): without a `docker` CLI on the `PATH` the container outlives the
    /// process and must be removed by hand (it is labelled by testcontainers).
    pub async fn shared() -> Result<&'static Self, BrokerError> {
        let mut ready = STARTING
            .get_or_init(|| {
                let (ready, wait) = tokio::sync::watch::channel(false);
                let spawned = std::thread::Builder::new()
                    .name("choreo-shared-postgres".to_owned())
                    .spawn(move || keep_shared_server(ready));
                if let Err(error) = spawned {
                    let _ = SHARED.set(Err(shared_start_error(format!(
                        "cannot spawn the thread that keeps the shared server: {error}"
                    ))));
                }
                wait
            })
            .clone();
        // An error means the thread is gone; what it left in SHARED says why.
        let _ = ready.wait_for(|ready| *ready).await;
        match SHARED.get() {
            Some(Ok(server)) => Ok(server),
            Some(Err(error)) => Err(error.clone()),
            None => Err(shared_start_error(
                "the thread that starts the shared server ended without starting it".to_owned(),
            )),
        }
    }

    /// Creates a fresh, uniquely named database on the server and returns its URL, for the
    /// test's own use. Databases are not dropped: they go with the container (on a server
    /// named by `CHOREO_POSTGRES_URL` they stay, named `choreo_test_<uuid>`).
    pub async fn database(&self) -> Result<String, BrokerError> {
        use sqlx::Connection;

        let name = format!("choreo_test_{}", uuid::Uuid::now_v7().simple());
        let refused = |action: &'static str, error: sqlx::Error| BrokerError::Refused {
            broker: self.0.spec.name,
            address: self.0.address.clone(),
            action,
            detail: error.to_string(),
        };
        let mut connection = sqlx::PgConnection::connect(self.url())
            .await
            .map_err(|error| refused("accept the kit's connection", error))?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut connection)
            .await
            .map_err(|error| refused("create a database", error))?;
        let _ = connection.close().await;
        Ok(with_database(self.url(), &name))
    }
}

#[cfg(feature = "postgres")]
impl std::ops::Deref for PostgresServer {
    type Target = Broker;

    fn deref(&self) -> &Broker {
        &self.0
    }
}

/// The shared server, once its thread started it (or failed to).
#[cfg(feature = "postgres")]
static SHARED: std::sync::OnceLock<Result<PostgresServer, BrokerError>> =
    std::sync::OnceLock::new();

/// Turns `true` once [`SHARED`] is set.
#[cfg(feature = "postgres")]
static STARTING: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

#[cfg(feature = "postgres")]
fn shared_start_error(detail: String) -> BrokerError {
    BrokerError::Start {
        broker: POSTGRES.name,
        image: std::env::var(POSTGRES.image_var)
            .unwrap_or_else(|_| POSTGRES.default_image.to_owned()),
        detail,
        image_var: POSTGRES.image_var,
        url_var: POSTGRES.url_var,
        example: POSTGRES.url_example,
    }
}

/// The shared server's thread: starts the server, publishes it in [`SHARED`], then keeps the
/// container (and the runtime its client lives on) for as long as the process lives.
#[cfg(feature = "postgres")]
fn keep_shared_server(ready: tokio::sync::watch::Sender<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = SHARED.set(Err(shared_start_error(format!(
                "cannot build the shared server's runtime: {error}"
            ))));
            let _ = ready.send(true);
            return;
        }
    };
    runtime.block_on(async move {
        match Broker::start(&POSTGRES).await {
            Ok(mut broker) => {
                let container = broker.container.take();
                if let Some(container) = &container {
                    broker.shared = Some(container.id().to_owned());
                    remove_when_the_process_exits(container.id());
                }
                tracing::info!(url = %broker.url, "shared PostgreSQL server ready");
                let _ = SHARED.set(Ok(PostgresServer(broker)));
                let _ = ready.send(true);
                let _kept = container;
                std::future::pending::<()>().await;
            }
            Err(error) => {
                let _ = SHARED.set(Err(error));
                let _ = ready.send(true);
            }
        }
    });
}

/// Spawns a detached watchdog that removes container `id` once this process has exited.
#[cfg(feature = "postgres")]
fn remove_when_the_process_exits(id: &str) {
    let has_docker = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("docker").is_file()));
    if !has_docker {
        tracing::warn!(
            container = id,
            "no `docker` CLI on the PATH: the shared PostgreSQL container will outlive this \
             process; remove it with `docker rm -f -v {id}`"
        );
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};

        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; docker rm -f -v {id}",
            pid = std::process::id()
        );
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C to the tests does not kill it with them.
            .process_group(0)
            .spawn();
        if let Err(error) = spawned {
            tracing::warn!(
                container = id,
                %error,
                "cannot spawn the watchdog: the shared PostgreSQL container will outlive \
                 this process"
            );
        }
    }
}

/// `url` with its path (the database) replaced by `database`, its query kept.
#[cfg(feature = "postgres")]
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = head.split_once("://").unwrap_or(("postgres", head));
    let authority = rest.split('/').next().unwrap_or_default();
    match query {
        Some(query) => format!("{scheme}://{authority}/{database}?{query}"),
        None => format!("{scheme}://{authority}/{database}"),
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

    #[cfg(feature = "postgres")]
    #[test]
    fn a_database_url_keeps_everything_but_the_path() {
        assert_eq!(
            with_database("postgres://u:p@db:5432/postgres?sslmode=disable", "t1"),
            "postgres://u:p@db:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://db", "t2"), "postgresql://db/t2");
    }

    #[test]
    fn broker_addresses_come_from_the_first_host() {
        assert_eq!(address_of("kafka://k1:9092,k2:9092?x=1"), "k1:9092");
        assert_eq!(address_of("amqp://u:p@rabbit:5672/%2f"), "rabbit:5672");
    }
}

//! Secrets (docs/configuration.md): every scenario whose URL carries a password runs with
//! logging at `trace` for every target (choreo's, lapin's, rdkafka's and librdkafka's, sqlx's,
//! testcontainers' and Docker's client), under the filter `choreo::telemetry::init` applies
//! to `RUST_LOG=trace`, and with every `tracing` span exported through OpenTelemetry. The
//! password appears in no log line, no span (name, attribute, event or status), no error's
//! `Display` or `Debug` text and no dead letter: neither as text nor as its bytes printed in
//! decimal, hexadecimal or base64.
//!
//! Every test's password is its own (`s3cr3t-<uuid>`), so tests on different brokers run side
//! by side behind the one subscriber of the process. Each test also finds what choreo prints
//! in the password's place (`user:***@host`) in what was captured, so that it cannot pass by
//! capturing nothing.
//!
//! The memory transport and store and the SQLite store take no password: nothing to test.
#![cfg(all(
    feature = "otlp",
    any(feature = "rabbitmq", feature = "kafka", feature = "postgres")
))]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use choreo::transport::{dead_letter_topic, DEAD_LETTER_REASON_HEADER, DEAD_LETTER_TOPIC_HEADER};
use choreo::{
    Context, Event, HandlerError, Headers, RawMessage, Saga, SagaLog, SagaOutcome, Service, Step,
    StepResult, Store, Transport,
};
use futures_util::future::BoxFuture;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How long a saga, a dead letter or a broker's answer may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// What the process's subscriber captured: every log line, and every span once it ended.
struct Capture {
    logs: Arc<Mutex<Vec<u8>>>,
    spans: InMemorySpanExporter,
    _provider: SdkTracerProvider,
}

/// Appends what the log layer writes to the shared buffer.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide subscriber, installed by the first test: logs at `trace` for every target
/// (and the `log` crate's records, which rdkafka, testcontainers and Docker's client write)
/// into memory, and every span to OpenTelemetry into memory. The filter is choreo's for
/// `RUST_LOG=trace`: everything, but the frames lapin logs with the login in them.
fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&logs);
        let spans = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_span_events(FmtSpan::NEW | FmtSpan::CLOSE)
                    .with_writer(move || Sink(Arc::clone(&writer)))
                    .with_filter(choreo::telemetry::log_filter("trace").unwrap()),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("choreo-secrets"))
                    .with_filter(choreo::telemetry::log_filter("trace").unwrap()),
            )
            .try_init()
            .expect("the only subscriber of the process");
        Capture {
            logs,
            spans,
            _provider: provider,
        }
    })
}

impl Capture {
    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    /// Every ended span, whole (name, attributes, events, links, status), as text.
    fn spans(&self) -> Vec<String> {
        self.spans
            .get_finished_spans()
            .unwrap()
            .iter()
            .map(|span| format!("{span:?}"))
            .collect()
    }
}

/// A password no library would print by chance.
fn password() -> String {
    format!("s3cr3t-{}", uuid::Uuid::new_v4().simple())
}

/// What a test saw besides the capture: errors' texts and dead letters.
#[derive(Default)]
struct Seen {
    texts: Vec<String>,
}

impl Seen {
    /// An error's `Display`, `Debug` and every cause's `Display`.
    fn error(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.texts.push(error.to_string());
        self.texts.push(format!("{error:?}"));
        let mut source = error.source();
        while let Some(cause) = source {
            self.texts.push(cause.to_string());
            source = cause.source();
        }
    }

    /// A dead letter's headers (names and values) and body.
    fn dead_letter(&mut self, letter: &RawMessage) {
        for (name, value) in &letter.headers {
            self.texts.push(name.to_string());
            self.texts.push(String::from_utf8_lossy(value).into_owned());
        }
        self.texts
            .push(String::from_utf8_lossy(&letter.body).into_owned());
    }

    /// The password is nowhere: not in the logs, the spans, the errors or the dead letters.
    /// Each of `redacted` (what choreo prints in a password's place) is in the logs, an
    /// error or a `Debug` text.
    fn assert_never_leaked(&self, passwords: &[&str], redacted: &[String]) {
        let logs = capture().logs();
        let spans = capture().spans();
        assert!(!logs.is_empty(), "nothing was logged");
        assert!(!spans.is_empty(), "no span was exported");
        for password in passwords
            .iter()
            .flat_map(|password| printed_forms(password))
        {
            let password = password.as_str();
            let leaking: Vec<&str> = logs
                .lines()
                .filter(|line| line.contains(password))
                .collect();
            assert!(
                leaking.is_empty(),
                "the password is logged:\n{}",
                leaking.join("\n")
            );
            let leaking: Vec<&String> = spans
                .iter()
                .filter(|span| span.contains(password))
                .collect();
            assert!(leaking.is_empty(), "the password is in spans: {leaking:#?}");
            let leaking: Vec<&String> = self
                .texts
                .iter()
                .filter(|text| text.contains(password))
                .collect();
            assert!(
                leaking.is_empty(),
                "the password is in errors or dead letters: {leaking:#?}"
            );
        }
        for url in redacted {
            assert!(url.contains("***"), "{url}");
            assert!(
                logs.contains(url) || self.texts.iter().any(|text| text.contains(url)),
                "`{url}` is neither in the logs nor in an error"
            );
        }
    }
}

/// How a password may be printed: as text, and its bytes in decimal (`Debug` of a byte
/// slice), hexadecimal and base64 (the middle of it, the same whatever precedes the password).
fn printed_forms(password: &str) -> Vec<String> {
    let bytes = password.as_bytes();
    let decimal = format!("{bytes:?}");
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut forms = vec![
        password.to_owned(),
        decimal.trim_matches(['[', ']']).to_owned(),
        hex.to_uppercase(),
        hex,
    ];
    for offset in 0..3 {
        let mut shifted = vec![0; offset];
        shifted.extend_from_slice(bytes);
        let encoded = base64(&shifted);
        forms.push(encoded[4..encoded.len() - 4].to_owned());
    }
    forms
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn passwords_are_looked_for_in_every_printed_form() {
    assert_eq!(base64(b"Man"), "TWFu");
    assert_eq!(base64(b"Ma"), "TWE=");
    assert_eq!(base64(b"\0user\0pw"), "AHVzZXIAcHc=");
    let forms = printed_forms("s3cr3t-42");
    assert_eq!(
        forms[..4],
        [
            "s3cr3t-42",
            "115, 51, 99, 114, 51, 116, 45, 52, 50",
            "7333637233742D3432",
            "7333637233742d3432",
        ]
    );
    // However the password is aligned in what is encoded, one form is in the encoding.
    for prefix in [&b""[..], b"\0", b"\0u"] {
        let mut message = prefix.to_vec();
        message.extend_from_slice(b"s3cr3t-0123456789");
        message.extend_from_slice(b"\0x");
        let encoded = base64(&message);
        let forms = printed_forms("s3cr3t-0123456789");
        assert!(
            forms.iter().any(|form| encoded.contains(form.as_str())),
            "{encoded}"
        );
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "secrets.OrderPlaced.v1")]
struct OrderPlaced {
    order_id: u64,
    amount: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "secrets.PaymentTaken.v1")]
struct PaymentTaken {
    order_id: u64,
}

async fn take_payment(order: OrderPlaced, _cx: Context) -> StepResult<PaymentTaken> {
    if order.amount > 100 {
        return Ok(Step::reject("over the limit"));
    }
    Ok(Step::done(PaymentTaken {
        order_id: order.order_id,
    }))
}

async fn cancel_order(_order: OrderPlaced, _cx: Context) -> Result<(), HandlerError> {
    Ok(())
}

/// Publishes a raw message on a topic, the transport's own way.
type PublishRaw = Box<dyn Fn(String, RawMessage) -> BoxFuture<'static, ()> + Send + Sync>;

/// Two services on `transport`, each with its store from `store`: one saga completes, one is
/// rejected and compensated, and a malformed message on the saga's topic is dead-lettered by
/// both services. The dead letters go to `seen`.
async fn sagas_and_a_dead_letter(
    transport: Arc<dyn Transport>,
    store: impl Fn() -> Arc<dyn Store>,
    publish_raw: PublishRaw,
    seen: &mut Seen,
) {
    let topic = format!("secrets.{}", uuid::Uuid::now_v7().simple());
    let saga = Saga::new(&topic)
        .timeout(PATIENCE)
        .completes_on::<PaymentTaken>();
    let log = SagaLog::start(Arc::clone(&transport), &saga, "secrets")
        .await
        .unwrap();
    let mut dead_letters = transport
        .subscribe("ops", &[dead_letter_topic(&topic)])
        .await
        .unwrap();
    let orders = Service::builder("orders", &saga)
        .store(store())
        .initiates::<OrderPlaced>()
        .compensate(cancel_order)
        .build()
        .unwrap()
        .run(Arc::clone(&transport))
        .await
        .unwrap();
    let payments = Service::builder("payments", &saga)
        .store(store())
        .step(take_payment)
        .build()
        .unwrap()
        .run(Arc::clone(&transport))
        .await
        .unwrap();

    let completed = orders
        .start_saga(OrderPlaced {
            order_id: 1,
            amount: 10,
        })
        .await
        .unwrap();
    let rejected = orders
        .start_saga(OrderPlaced {
            order_id: 2,
            amount: 1_000,
        })
        .await
        .unwrap();
    assert_eq!(
        log.wait_for_end(completed, PATIENCE).await.unwrap(),
        SagaOutcome::Completed
    );
    assert!(matches!(
        log.wait_for_end(rejected, PATIENCE).await.unwrap(),
        SagaOutcome::Compensated { failed, .. } if failed.is_empty()
    ));

    let garbage = RawMessage {
        headers: Headers::from([("ce_type", "broken")]),
        body: b"\x00 not an event".to_vec(),
    };
    publish_raw(topic.clone(), garbage.clone()).await;
    for _ in 0..2 {
        let letter = tokio::time::timeout(PATIENCE, dead_letters.next())
            .await
            .expect("a dead letter from each service")
            .unwrap();
        assert_eq!(letter.message.body, garbage.body);
        assert_eq!(
            letter.message.header(DEAD_LETTER_TOPIC_HEADER),
            Some(topic.as_bytes())
        );
        assert!(letter.message.header(DEAD_LETTER_REASON_HEADER).is_some());
        seen.dead_letter(&letter.message);
        letter.ack().await.unwrap();
    }

    orders.shutdown().await;
    payments.shutdown().await;
    drop(dead_letters);
    drop(log);
}

/// A warning that `what` (`broker`, `store`) could not be reached at `url` was logged.
fn assert_warned(what: &str, url: &str) {
    let logs = capture().logs();
    let warned = logs.lines().any(|line| {
        line.contains(" WARN ")
            && line.contains(&format!("cannot reach the {what} yet"))
            && line.contains(url)
    });
    assert!(
        warned,
        "no warning that the {what} at `{url}` cannot be reached"
    );
}

/// `url` with its password replaced by `***`, as choreo prints it.
fn redacted(url: &str, password: &str) -> String {
    url.replace(&format!(":{password}@"), ":***@")
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;
    use choreo::rabbitmq::RabbitMqTransport;
    use choreo::{ConnectError, MemoryStore, TransportError, TransportUrl};
    use choreo_testkit::RabbitMqBroker;

    /// A user of the test's own, with a password of its own: connecting, two sagas, a dead
    /// letter; then a wrong password, and a host nobody listens on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_rabbitmq_url_password_is_ever_printed() {
        capture();
        let broker = RabbitMqBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let user = format!("app-{}", uuid::Uuid::new_v4().simple());
        let password = password();
        let url = broker.add_user(&user, &password).await.unwrap();
        let url = format!("{url}?reconnect.max.ms=1000");
        let mut seen = Seen::default();

        let transport = Arc::new(
            RabbitMqTransport::connect(&TransportUrl::parse(&url).unwrap())
                .await
                .unwrap(),
        );
        seen.texts.push(format!("{transport:?}"));
        let raw = Arc::clone(&transport);
        let publish_raw: PublishRaw = Box::new(move |topic, message| {
            let raw = Arc::clone(&raw);
            Box::pin(async move { raw.publish_raw(&topic, &message).await.unwrap() })
        });
        sagas_and_a_dead_letter(
            transport,
            || Arc::new(MemoryStore::new()),
            publish_raw,
            &mut seen,
        )
        .await;

        // The user's wrong password: refused by the broker, a typed error, and retried with
        // a warning until the time is up.
        let wrong = password_of_another_kind();
        let wrong_url = url.replace(&password, &wrong);
        let error = choreo::connect(&wrong_url).await.err().unwrap();
        let ConnectError::Transport {
            url: printed,
            source,
        } = &error
        else {
            panic!("not a transport error: {error:?}");
        };
        assert_eq!(printed, &redacted(&wrong_url, &wrong));
        assert!(
            matches!(source, TransportError::Connection(_)),
            "{source:?}"
        );
        assert!(error.to_string().contains("ACCESS_REFUSED"), "{error}");
        seen.error(&error);
        let error = choreo::connect_within(&wrong_url, Duration::from_millis(600))
            .await
            .err()
            .unwrap();
        seen.error(&error);
        assert_warned("broker", &redacted(&wrong_url, &wrong));

        // Nobody listens there.
        let unreachable = format!(
            "amqp://{user}:{password}@127.0.0.1:{}/%2f?connect.timeout.ms=2000",
            closed_port()
        );
        let error = choreo::connect(&unreachable).await.err().unwrap();
        assert!(
            matches!(
                &error,
                ConnectError::Transport {
                    source: TransportError::Connection(_),
                    ..
                }
            ),
            "{error:?}"
        );
        seen.error(&error);

        seen.assert_never_leaked(
            &[&password, &wrong],
            &[
                format!(
                    "RabbitMqConfig {{ uri: \"amqp://{user}:***@{}/%2F\"",
                    broker.address()
                ),
                redacted(&wrong_url, &wrong),
                redacted(&unreachable, &password),
            ],
        );
        assert!(
            capture().logs().contains(" lapin::"),
            "lapin's trace logs were not captured"
        );
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use choreo::kafka::KafkaTransport;
    use choreo::{ConnectError, MemoryStore, TransportError, TransportUrl};
    use choreo_testkit::KafkaBroker;

    /// The test broker (tansu) takes no credentials: the password goes to librdkafka's
    /// `sasl.password` on a plaintext connection, where two sagas and a dead letter run; then
    /// SASL logins the broker does not take, and a host nobody listens on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_kafka_url_password_is_ever_printed() {
        capture();
        let broker = KafkaBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let password = password();
        let address = broker.bootstrap_servers().to_owned();
        let url = format!(
            "kafka://app:{password}@{address}?session.timeout.ms=2000&commit.interval.ms=100\
             &message.timeout.ms=10000&rdkafka.fetch.wait.max.ms=20"
        );
        let mut seen = Seen::default();

        let transport = Arc::new(
            KafkaTransport::connect(&TransportUrl::parse(&url).unwrap())
                .await
                .unwrap(),
        );
        seen.texts.push(format!("{transport:?}"));
        let raw = Arc::clone(&transport);
        let publish_raw: PublishRaw = Box::new(move |topic, message| {
            let raw = Arc::clone(&raw);
            Box::pin(async move { raw.publish_raw(&topic, None, &message).await.unwrap() })
        });
        sagas_and_a_dead_letter(
            transport,
            || Arc::new(MemoryStore::new()),
            publish_raw,
            &mut seen,
        )
        .await;

        // SASL logins the broker does not take.
        let mut refused = Vec::new();
        for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
            let login = format!(
                "kafka://app:{password}@{address}?security.protocol=sasl_plaintext\
                 &sasl.mechanism={mechanism}&connect.timeout.ms=3000"
            );
            let error = choreo::connect(&login).await.err().unwrap();
            assert!(
                matches!(&error, ConnectError::Transport { url, .. } if *url == redacted(&login, &password)),
                "{error:?}"
            );
            seen.error(&error);
            refused.push(redacted(&login, &password));
        }

        // Nobody listens there.
        let unreachable = format!(
            "kafka://app:{password}@127.0.0.1:{}?security.protocol=sasl_plaintext\
             &sasl.mechanism=PLAIN&connect.timeout.ms=500",
            closed_port()
        );
        let error = choreo::connect_within(&unreachable, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                &error,
                ConnectError::Transport {
                    source: TransportError::Connection(_),
                    ..
                }
            ),
            "{error:?}"
        );
        seen.error(&error);
        assert_warned("broker", &redacted(&unreachable, &password));

        let mut expected = vec![
            "(\"sasl.username\", \"app\"), (\"sasl.password\", \"***\")".to_owned(),
            redacted(&unreachable, &password),
        ];
        expected.extend(refused);
        seen.assert_never_leaked(&[&password], &expected);
        assert!(
            capture().logs().contains(" rdkafka::"),
            "rdkafka's logs were not captured"
        );
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use choreo::memory::MemoryTransport;
    use choreo::postgres::sqlx::{self, Connection};
    use choreo::postgres::PostgresStore;
    use choreo::{OpenStoreError, StoreUrl};
    use choreo_testkit::PostgresServer;

    /// A role of the test's own, with a password of its own, owning a database of its own:
    /// the store opens and two sagas and a dead letter run on it; then a wrong password, and
    /// a host nobody listens on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_postgres_url_password_is_ever_printed() {
        capture();
        let server = PostgresServer::shared()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let database = server.database().await.unwrap();
        let role = format!("app_{}", uuid::Uuid::new_v4().simple());
        let password = password();
        let name = database.rsplit('/').next().unwrap().to_owned();
        // sqlx logs every statement: the password goes reversed and the server turns it round.
        let reversed: String = password.chars().rev().collect();
        let mut admin = sqlx::PgConnection::connect(server.url()).await.unwrap();
        for statement in [
            format!(
                "DO $$ BEGIN EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', '{role}', \
                 reverse('{reversed}')); END $$"
            ),
            format!("ALTER DATABASE \"{name}\" OWNER TO \"{role}\""),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        admin.close().await.unwrap();
        let url = format!("postgres://{role}:{password}@{}/{name}", server.address());
        let mut seen = Seen::default();

        let store = PostgresStore::open(&StoreUrl::parse(&url).unwrap())
            .await
            .unwrap();
        seen.texts.push(format!("{store:?}"));
        let store: Arc<dyn Store> = Arc::new(store);
        let transport = MemoryTransport::shared(&format!("secrets-{}", uuid::Uuid::now_v7()));
        let raw = transport.clone();
        let publish_raw: PublishRaw = Box::new(move |topic, message| {
            raw.publish_raw(&topic, None, message).unwrap();
            Box::pin(async {})
        });
        sagas_and_a_dead_letter(
            Arc::new(transport),
            move || Arc::clone(&store),
            publish_raw,
            &mut seen,
        )
        .await;

        // A wrong password: refused by the server, a typed error, and retried with a warning
        // until the time is up.
        let wrong = password_of_another_kind();
        let wrong_url = url.replace(&password, &wrong);
        let error = choreo::open_store(&wrong_url).await.err().unwrap();
        let OpenStoreError::Open { url: printed, .. } = &error else {
            panic!("not an open error: {error:?}");
        };
        assert_eq!(printed, &redacted(&wrong_url, &wrong));
        assert!(error.to_string().contains("refused to log in"), "{error}");
        seen.error(&error);
        let error = choreo::open_store_within(&wrong_url, Duration::from_millis(600))
            .await
            .err()
            .unwrap();
        seen.error(&error);
        assert_warned("store", &redacted(&wrong_url, &wrong));

        // Nobody listens there.
        let unreachable = format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{name}?connect.timeout.ms=500",
            closed_port()
        );
        let error = choreo::open_store(&unreachable).await.err().unwrap();
        assert!(matches!(&error, OpenStoreError::Open { .. }), "{error:?}");
        seen.error(&error);

        seen.assert_never_leaked(
            &[&password, &wrong],
            &[
                format!("PostgresConfig {{ url: \"{}\"", redacted(&url, &password)),
                redacted(&wrong_url, &wrong),
                redacted(&unreachable, &password),
            ],
        );
        assert!(
            capture().logs().contains(" sqlx"),
            "sqlx's logs were not captured"
        );
    }
}

/// A second password, for a wrong login.
#[allow(dead_code)] // Not on Kafka.
fn password_of_another_kind() -> String {
    format!("wr0ng-{}", uuid::Uuid::new_v4().simple())
}

/// A local port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

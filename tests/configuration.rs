//! Configuration errors are typed and say what to do (docs/configuration.md), and a service
//! definition that cannot work is refused before it runs.

mod common;

use std::sync::Arc;

use choreo::memory::MemoryTransport;
use choreo::{ConnectError, Context, OpenStoreError, Service, StartError, UrlError};
use common::*;
use std::time::Duration;

#[tokio::test]
async fn memory_urls_connect_and_share_a_broker_per_name() {
    let transport = choreo::connect("memory://").await.unwrap();
    assert_eq!(transport.name(), "memory");
    assert!(choreo::connect("memory://other").await.is_ok());
}

#[tokio::test]
async fn an_unknown_scheme_names_the_schemes_compiled_in() {
    let error = choreo::connect("nats://broker:4222").await.err().unwrap();
    assert!(matches!(
        &error,
        ConnectError::Url(UrlError::UnsupportedScheme { scheme, .. }) if scheme == "nats"
    ));
    let compiled_in: Vec<String> = choreo::SUPPORTED_SCHEMES
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect();
    assert_eq!(
        error.to_string(),
        format!(
            "unsupported transport scheme `nats://`; this build supports: {}",
            compiled_in.join(", ")
        )
    );
}

#[tokio::test]
async fn a_broker_scheme_without_its_feature_names_the_feature_and_hides_the_password() {
    let error =
        choreo::connect("amqp://app:hunter2@rabbit.invalid:5672/%2f?connect.timeout.ms=2000")
            .await
            .err()
            .unwrap();
    let message = error.to_string();
    #[cfg(not(feature = "rabbitmq"))]
    assert!(message.contains("`rabbitmq` cargo feature"), "{message}");
    #[cfg(feature = "rabbitmq")]
    assert!(message.contains("app:***@rabbit.invalid"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!format!("{error:?}").contains("hunter2"));

    #[cfg(not(feature = "kafka"))]
    {
        let error = choreo::connect("kafka://k1:9092,k2:9092")
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("`kafka` cargo feature"));
    }
}

#[tokio::test]
async fn a_string_that_is_not_a_url_says_what_was_expected() {
    let error = choreo::connect("localhost:9092").await.err().unwrap();
    let message = error.to_string();
    assert!(message.contains("has no `scheme://`"), "{message}");
    assert!(message.contains("expected e.g. `memory://`"), "{message}");
}

#[test]
fn a_definition_that_cannot_work_is_refused_with_every_problem() {
    let error = Service::builder("payments", &saga(Backend::MEMORY.timeout()))
        .step(|_: OrderPlaced, _: Context| async {
            Ok(choreo::Step::done(CreditReserved {
                order_id: 1,
                amount_cents: 1,
                sku: "x".into(),
            }))
        })
        .step(|_: OrderPlaced, _: Context| async { Ok(choreo::Step::done(())) })
        .compensate(|_: StockReserved, _: Context| async { Ok(()) })
        .build()
        .unwrap_err();
    assert_eq!(error.service, "payments");
    assert_eq!(error.problems.len(), 2, "{error}");
    assert!(error.problems[0].contains("two steps handle `orders.OrderPlaced.v1`"));
    assert!(error.problems[1].contains("no step of this service emits it"));

    // A join is checked per type it waits for.
    let error = Service::builder("payments", &saga(Backend::MEMORY.timeout()))
        .step(|_: OrderPlaced, _: Context| async { Ok(choreo::Step::done(())) })
        .join(|_: (OrderPlaced, StockReserved), _: Context| async { Ok(choreo::Step::done(())) })
        .join(|_: (CreditReserved, CreditReserved), _: Context| async {
            Ok(choreo::Step::done(()))
        })
        .build()
        .unwrap_err();
    assert_eq!(
        error.problems,
        [
            "two steps handle `orders.OrderPlaced.v1`; register one",
            "a join waits for `payments.CreditReserved.v1` twice; list each type once",
        ]
    );

    let no_terminal = Service::builder("orders", &choreo::Saga::new(TOPIC))
        .initiates::<OrderPlaced>()
        .build()
        .unwrap_err();
    assert!(no_terminal
        .to_string()
        .contains("declares no terminal event"));
}

/// A terminal event that the saga says one service alone emits (`Saga::completes_on_from`)
/// is refused in the steps of any other: that service leaves the event out of what it
/// subscribes to, and would never hear of the sagas the other completed. The service named
/// must emit it.
#[test]
fn a_terminal_event_that_the_saga_gives_to_another_service_is_refused_in_a_step() {
    let saga = saga(Backend::MEMORY.timeout()).completes_on_from::<OrderConfirmed>("orders");
    let confirm = |_: PaymentCaptured, _: Context| async {
        Ok(choreo::Step::done(OrderConfirmed { order_id: 1 }))
    };
    let error = Service::builder("payments", &saga)
        .step(confirm)
        .build()
        .unwrap_err();
    assert_eq!(
        error.problems,
        [format!(
            "it emits `orders.OrderConfirmed.v1`, which saga `{TOPIC}` says `orders` alone emits (`Saga::completes_on_from`), and `orders` would never hear of the sagas this service completes; if more services emit it, declare it with `Saga::completes_on`"
        )]
    );
    let orders = Service::builder("orders", &saga)
        .initiates::<OrderPlaced>()
        .step(confirm)
        .build();
    assert!(orders.is_ok());

    // The service it names must emit it: it leaves the event out of what it subscribes to.
    let error = Service::builder("orders", &saga)
        .initiates::<OrderPlaced>()
        .build()
        .unwrap_err();
    assert_eq!(
        error.problems,
        [format!(
            "saga `{TOPIC}` says this service alone emits `orders.OrderConfirmed.v1` (`Saga::completes_on_from`), so it does not subscribe to it, but no step of it emits it and it does not initiate with it; name the service that does"
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn only_a_declared_initiator_starts_sagas() {
    let h = Harness::start(Backend::MEMORY).await;
    let payments = h
        .service("payments", h.options())
        .await
        .run(Arc::new(MemoryTransport::new()))
        .await
        .unwrap();
    let error = payments
        .start_saga(OrderPlaced {
            order_id: 1,
            amount_cents: 1,
            sku: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(error, StartError::NotInitiator { .. }));
    assert!(error
        .to_string()
        .contains(".initiates::<orders.OrderPlaced.v1>()"));
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn an_unreachable_kafka_is_a_typed_error_within_the_connect_timeout_without_the_password() {
    let message = refused_in_time(
        "kafka://app:hunter2@127.0.0.1:1?connect.timeout.ms=2000",
        10,
    )
    .await;
    assert!(message.contains("no answer from 127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_bad_kafka_option_names_the_option_and_the_known_ones() {
    let error = choreo::connect("kafka://localhost:9092?partitons=3")
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("`partitons`") && message.contains("known: client.id"),
        "{message}"
    );
}

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn an_unreachable_rabbitmq_is_a_typed_error_within_the_connect_timeout_without_the_password()
{
    let message = refused_in_time(
        "amqp://app:hunter2@127.0.0.1:1/%2f?connect.timeout.ms=2000",
        10,
    )
    .await;
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_rabbitmq_credentials_are_a_typed_error_without_the_password() {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = broker
        .url()
        .replace("guest:guest", "guest:not-the-password");
    let message = refused_in_time(&format!("{url}?connect.timeout.ms=5000"), 15).await;
    assert!(!message.contains("not-the-password"), "{message}");
}

#[cfg(feature = "rabbitmq")]
#[tokio::test]
async fn a_bad_rabbitmq_option_names_the_option_and_the_known_ones() {
    let error = choreo::connect("amqp://localhost?prefech=3")
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(
        message.contains("`prefech`") && message.contains("known: exchange"),
        "{message}"
    );
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_speaks_tls_so_a_plain_port_fails_fast_with_a_typed_error() {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = broker.url().replacen("amqp://", "amqps://", 1);
    let message = refused_in_time(&format!("{url}?connect.timeout.ms=5000"), 15).await;
    // rustls rejects the plain AMQP greeting: TLS was spoken.
    assert!(message.contains("InvalidContentType"), "{message}");
}

/// TLS and SCRAM are compiled in (OpenSSL): `security.protocol=ssl` speaks TLS, so the test
/// broker's plaintext listener fails the handshake; SCRAM logins reach the broker, which
/// refuses them, rather than failing when the client is made.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_speaks_tls_and_scram_so_a_plain_port_refuses_them_with_typed_errors() {
    let broker = choreo_testkit::KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let address = broker.bootstrap_servers();
    for options in [
        "security.protocol=ssl",
        "security.protocol=sasl_ssl&sasl.mechanism=SCRAM-SHA-512",
        "security.protocol=sasl_plaintext&sasl.mechanism=SCRAM-SHA-256",
    ] {
        let url = format!("kafka://app:hunter2@{address}?{options}&connect.timeout.ms=3000");
        let message = refused_in_time(&url, 15).await;
        assert!(message.contains("no answer from"), "{options}: {message}");
        assert!(!message.contains("hunter2"), "{options}: {message}");
    }
}

/// A CA file that is not there fails when the client is made, naming the file.
#[cfg(feature = "kafka")]
#[tokio::test]
async fn a_missing_kafka_ca_file_is_a_typed_error_naming_it() {
    let url = "kafka://localhost:9092?security.protocol=ssl&ssl.ca.location=/nonexistent/ca.pem";
    let error = choreo::connect(url).await.err().unwrap();
    assert!(matches!(error, ConnectError::Transport { .. }), "{error:?}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}

/// Connects to `url`, which must fail as a transport error within `seconds`; returns the
/// error as displayed and debug-printed, for checks on what it says and hides.
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
async fn refused_in_time(url: &str, seconds: u64) -> String {
    let started = std::time::Instant::now();
    let error = choreo::connect(url).await.err().unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(seconds));
    assert!(matches!(error, ConnectError::Transport { .. }), "{error:?}");
    format!("{error} {error:?}")
}

/// Logs written while `run` runs, on this thread.
#[cfg(any(feature = "rabbitmq", feature = "sqlite"))]
async fn logged<F: std::future::Future>(run: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let output = {
        let _default = tracing::subscriber::set_default(subscriber);
        run.await
    };
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (output, text)
}

/// A service on a broker with its saga state in process memory warns that it dies with the
/// process and cannot be shared with another instance; with a durable store it does not.
#[cfg(all(feature = "rabbitmq", feature = "sqlite"))]
#[tokio::test]
async fn the_memory_store_on_a_broker_warns_that_sagas_die_with_the_process() {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let transport = choreo::connect(broker.url()).await.unwrap();
    let payments = |store: Arc<dyn choreo::Store>| {
        Service::builder("payments", &saga(Backend::MEMORY.timeout()))
            .store(store)
            .step(|_: OrderPlaced, _: Context| async { Ok(choreo::Step::done(())) })
            .build()
            .unwrap()
    };

    let (running, logs) =
        logged(payments(Arc::new(choreo::MemoryStore::new())).run(Arc::clone(&transport))).await;
    running.unwrap().shutdown().await;
    assert!(
        logs.contains("saga state is kept in process memory")
            && logs.contains("another instance of this service cannot compensate")
            && logs.contains("sqlite://, postgres://"),
        "{logs}"
    );

    let directory = std::env::temp_dir().join(format!("choreo-warning-{}", uuid::Uuid::now_v7()));
    let store = choreo::open_store(&format!("sqlite://{}/payments.db", directory.display()))
        .await
        .unwrap();
    let (running, logs) = logged(payments(store).run(transport)).await;
    running.unwrap().shutdown().await;
    assert!(!logs.contains("process memory"), "{logs}");
    let _ = std::fs::remove_dir_all(directory);

    // On the in-memory transport the whole system lives in one process: no warning.
    let memory: Arc<dyn choreo::Transport> = Arc::new(MemoryTransport::new());
    let (running, logs) = logged(payments(Arc::new(choreo::MemoryStore::new())).run(memory)).await;
    running.unwrap().shutdown().await;
    assert!(!logs.contains("process memory"), "{logs}");
}

/// `connect_within` and `open_store_within` do not try again what cannot work.
#[tokio::test(start_paused = true)]
async fn a_url_that_cannot_work_is_not_tried_again() {
    let started = tokio::time::Instant::now();
    let error = choreo::connect_within("localhost:9092", Duration::from_secs(3_600))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ConnectError::Url(_)), "{error:?}");
    let error = choreo::open_store_within("mysql://db/orders", Duration::from_secs(3_600))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, OpenStoreError::Url(_)), "{error:?}");
    assert_eq!(started.elapsed(), Duration::ZERO, "nothing was waited for");
}

/// A store that cannot be opened is tried again, each failure logged, with waits doubling
/// from half a second up to ten, until the time given; then the last failure is returned.
#[cfg(feature = "sqlite")]
#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_be_opened_is_tried_again_until_the_time_given() {
    let started = tokio::time::Instant::now();
    let (result, logs) = logged(choreo::open_store_within(
        "sqlite:///dev/null/orders.db",
        Duration::from_secs(30),
    ))
    .await;
    let error = result.err().unwrap();
    assert!(matches!(error, OpenStoreError::Open { .. }), "{error:?}");
    // Tries at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 25.5 and 30 s.
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(
        logs.matches("cannot reach the store yet; trying again")
            .count(),
        7,
        "{logs}"
    );
}

/// A service that starts before its broker: while the broker refuses connections (here it
/// closes the first two at once), each try is logged and another made; once the broker is
/// up, `connect_within` returns a working transport.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_starts_before_its_broker_connects_once_the_broker_is_up() {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let parsed = choreo::TransportUrl::parse(broker.url()).unwrap();
    let upstream = format!("{}:{}", parsed.host().unwrap(), parsed.port().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let entrance = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        for connection in 0.. {
            let (mut client, _) = listener.accept().await.unwrap();
            if connection < 2 {
                continue; // Dropped: closed before the broker said a word.
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    let url = format!("amqp://guest:guest@{entrance}/%2f?connect.timeout.ms=5000");

    let (transport, logs) = logged(choreo::connect_within(&url, Duration::from_secs(60))).await;
    let transport = transport.unwrap();
    assert_eq!(
        logs.matches("cannot reach the broker yet; trying again")
            .count(),
        2,
        "{logs}"
    );
    assert!(!logs.contains("guest:guest"), "{logs}");

    let service = Service::builder("payments", &saga(Backend::MEMORY.timeout()))
        .step(|_: OrderPlaced, _: Context| async { Ok(choreo::Step::done(())) })
        .build()
        .unwrap();
    service.run(transport).await.unwrap().shutdown().await;
}

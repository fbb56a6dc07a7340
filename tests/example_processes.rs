//! The order saga example, one service per process, on each broker: the same code as on
//! memory, only `CHOREO_URL` changes. Each process exports its spans and metrics over
//! OTLP/HTTP to a receiver in the test, where they join into one trace per saga. And the same
//! saga with its inventory written in Python (examples/polyglot/inventory.py). Every event of
//! both is read by the official CloudEvents SDK and checked against the protocol of
//! docs/wire-format.md and its JSON Schemas (tests/polyglot/read_events.py).
#![cfg(any(feature = "kafka", feature = "rabbitmq"))]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The order saga example binary `cargo test` built next to this test.
fn example() -> PathBuf {
    example_named("order_saga")
}

/// Example binary `name`, built next to this test.
fn example_named(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join(name)
}

/// A Kafka broker of the kit, and its URL with a short group join and fetch wait, for
/// sagas whose deadline is two seconds.
#[cfg(feature = "kafka")]
async fn kafka() -> (choreo_testkit::KafkaBroker, String) {
    let broker = choreo_testkit::KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = format!(
        "{}?session.timeout.ms=2000&rdkafka.fetch.wait.max.ms=20",
        broker.url()
    );
    (broker, url)
}

#[cfg(feature = "rabbitmq")]
async fn rabbitmq() -> choreo_testkit::RabbitMqBroker {
    choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_the_example_completes_its_three_sagas_with_each_service_in_its_own_process() {
    let (_broker, url) = kafka().await;
    play_across_processes(&url).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_the_example_completes_its_three_sagas_with_each_service_in_its_own_process() {
    let broker = rabbitmq().await;
    play_across_processes(broker.url()).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_the_travel_example_plays_its_four_trips() {
    let (_broker, url) = kafka().await;
    play_the_trips(&url).await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_the_travel_example_plays_its_four_trips() {
    let broker = rabbitmq().await;
    play_the_trips(broker.url()).await;
}

/// Runs the travel example on the broker at `url` and checks what it printed: each trip's
/// outcome and timeline, and what the services did.
async fn play_the_trips(url: &str) {
    let run = tokio::process::Command::new(example_named("travel"))
        .env("CHOREO_URL", url)
        .env_remove("CHOREO_STORE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the travel example finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // Each trip's outcome, then its events as `source kind type`, in order (the two
    // bookings run in parallel, so the join's inputs may arrive either way round).
    let trips: Vec<&str> = stdout.split("\ntrip ").skip(1).collect();
    assert_eq!(trips.len(), 4, "{stdout}");
    let timeline = |trip: &str| -> Vec<String> {
        trip.lines()
            .filter(|line| line.trim_start().starts_with('+'))
            .map(|line| {
                // `+ 0.003s source kind type ...`; from 10 s on, `+10.003s`.
                let fields: Vec<&str> = line.trim_start()[1..].split_whitespace().collect();
                fields[1..4].join(" ")
            })
            .collect()
    };
    let branches = |events: &mut Vec<String>| events[1..3].sort();
    assert!(
        trips[0].starts_with("1 to Lisbon (should be confirmed): COMPLETED"),
        "{stdout}"
    );
    let mut lisbon = timeline(trips[0]);
    branches(&mut lisbon);
    assert_eq!(
        lisbon,
        [
            "trips start trips.TripRequested.v1",
            "flights step flights.FlightBooked.v1",
            "hotels step hotels.HotelBooked.v1",
            "payments step payments.PaymentCharged.v1",
            "trips complete trips.TripConfirmed.v1",
        ]
    );
    assert!(
        trips[1].starts_with("2 to Oslo (should be invoiced): COMPLETED"),
        "{stdout}"
    );
    let mut oslo = timeline(trips[1]);
    branches(&mut oslo);
    assert_eq!(
        oslo,
        [
            "trips start trips.TripRequested.v1",
            "flights step flights.FlightBooked.v1",
            "hotels step hotels.HotelBooked.v1",
            "payments complete payments.InvoiceIssued.v1",
        ]
    );
    assert!(
        trips[2].starts_with(
            "3 to Venice (should find no room and be compensated): COMPENSATED (rejected)"
        ),
        "{stdout}"
    );
    // Flights books before it learns of the abort (it comes after the request on the
    // topic) and cancels after; the rest arrives in any order.
    let mut venice = timeline(trips[2]);
    venice[1..].sort();
    assert_eq!(
        venice,
        [
            "trips start trips.TripRequested.v1",
            "flights compensated choreo.SagaCompensated.v1",
            "flights step flights.FlightBooked.v1",
            "hotels abort choreo.SagaAborted.v1",
            "hotels compensated choreo.SagaCompensated.v1",
            "payments compensated choreo.SagaCompensated.v1",
            "trips compensated choreo.SagaCompensated.v1",
        ]
    );
    assert!(
        trips[3].starts_with(
            "4 to Rome (should be over budget and undone from the charge back): COMPENSATED (rejected)"
        ),
        "{stdout}"
    );
    // In reverse order: payments' charge undone first, the two bookings next, the request last.
    let mut rome = timeline(trips[3]);
    branches(&mut rome);
    rome[6..8].sort();
    assert_eq!(
        rome,
        [
            "trips start trips.TripRequested.v1",
            "flights step flights.FlightBooked.v1",
            "hotels step hotels.HotelBooked.v1",
            "payments step payments.PaymentCharged.v1",
            "trips abort choreo.SagaAborted.v1",
            "payments compensated choreo.SagaCompensated.v1",
            "flights compensated choreo.SagaCompensated.v1",
            "hotels compensated choreo.SagaCompensated.v1",
            "trips compensated choreo.SagaCompensated.v1",
        ]
    );
    let position = |line: &str| {
        stdout
            .find(line)
            .unwrap_or_else(|| panic!("no `{line}` in\n{stdout}"))
    };
    let refunded = position("payments trip 4 refunded");
    assert!(refunded < position("flights  CH104 cancelled"), "{stdout}");
    assert!(
        refunded < position("hotels   Grand Rome cancelled"),
        "{stdout}"
    );
    for booking in ["flights  CH104 cancelled", "hotels   Grand Rome cancelled"] {
        assert!(
            position(booking) < position("trips    trip 4 cancelled"),
            "{stdout}"
        );
    }
    for done in [
        "trips    trip 4 declined: over the budget",
        "flights  CH101 booked to Lisbon",
        "hotels   Grand Lisbon booked",
        "payments trip 1: 42000 cents charged",
        "trips    trip 1 confirmed",
        "payments trip 2: 42000 cents invoiced to ACME Corp",
        "flights  CH103 cancelled",
        "trips    trip 3 cancelled",
    ] {
        assert!(stdout.contains(done), "{stdout}");
    }
    assert!(
        !stdout.contains("trip 1 refunded") && !stdout.contains("voided"),
        "{stdout}"
    );
}

/// The example binary, configured to run one service of the saga.
fn command(url: &str, env: &[(&str, &str)], args: &[&str]) -> tokio::process::Command {
    let binary = example();
    assert!(binary.exists(), "{} was not built", binary.display());
    let mut command = tokio::process::Command::new(&binary);
    command
        .args(args)
        .env("CHOREO_URL", url)
        .env_remove("CHOREO_STORE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Starts service `name` and waits until it runs (has joined its consumer group); every
/// line it writes to stderr goes to `lines`, so it never writes to a closed pipe.
async fn start_service(
    mut command: tokio::process::Command,
    name: &str,
    lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> tokio::process::Child {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let running = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("is running") {
                return;
            }
        }
        let status = child.wait().await;
        panic!("{name} exited before it ran: {status:?}");
    });
    running
        .await
        .unwrap_or_else(|_| panic!("{name} did not start"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            if let Some(lines) = &lines {
                let _ = lines.send(line);
            }
        }
    });
    child
}

/// Every service keeps its sagas and its business state in a SQLite file of its own.
/// Payments is killed (SIGKILL) while the slow-supplier saga waits on inventory, and
/// started again on its file: the saga times out and payments, back, compensates the
/// credit it reserved before it died, and says so.
#[cfg(all(feature = "rabbitmq", feature = "sqlite"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_with_sqlite_stores_payments_killed_mid_saga_comes_back_and_releases_the_credit(
) {
    let broker = rabbitmq().await;
    let url = broker.url();
    let directory = std::env::temp_dir().join(format!("choreo-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    let store = format!("sqlite://{}/{{service}}.db", directory.display());
    let env = [("CHOREO_STORE", store.as_str()), ("RUST_LOG", "info")];

    let payments_command = || command(url, &env, &["--service", "payments"]);
    let mut payments = start_service(payments_command(), "payments", None).await;
    let (lines, mut inventory_says) = tokio::sync::mpsc::unbounded_channel();
    let inventory = start_service(
        command(url, &env, &["--service", "inventory"]),
        "inventory",
        Some(lines),
    )
    .await;
    let play = play(url, &env);

    // Payments has reserved the espresso machine's credit; inventory is at the supplier.
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = inventory_says.recv().await {
            if line.contains("asking the supplier") {
                return;
            }
        }
    })
    .await
    .expect("inventory asked the supplier");
    payments.start_kill().unwrap(); // SIGKILL: no shutdown at all
    payments.wait().await.unwrap();
    let payments = start_service(payments_command(), "payments", None).await;

    let stdout = played(play).await;
    let slow = stdout
        .split("order 3 (should time out (slow supplier) and be compensated): ")
        .nth(1)
        .unwrap_or_else(|| panic!("no third saga: {stdout}"));
    assert!(slow.starts_with("COMPENSATED (timed out)"), "{stdout}");
    assert!(
        slow.lines().any(|line| line.contains("payments")
            && line.contains("choreo.SagaCompensated.v1")
            && line.contains("(undid payments.CreditReserved.v1)")),
        "payments did not undo its credit: {stdout}"
    );

    // The credit is back: 10,000 cents less the completed order's 4,000.
    let payments_db =
        choreo::sqlite::rusqlite::Connection::open(directory.join("payments.db")).unwrap();
    let available: i64 = payments_db
        .query_row(
            "SELECT available_cents FROM credit WHERE account = 'main'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(available, 6_000);
    for mut service in [payments, inventory] {
        let pid = nix::unistd::Pid::from_raw(service.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), service.wait())
            .await
            .expect("the service stopped on Ctrl-C")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
    let _ = std::fs::remove_dir_all(&directory);
}

/// Two processes of every service on one PostgreSQL store (docs/deployment.md): payments
/// and inventory twice, orders once plus the one that plays. The inventory process that is
/// asking the slow supplier in the third saga is killed (SIGKILL); its delivery goes to the
/// other inventory process, the saga times out, and the three sagas end as they do with one
/// process each, the credit and the stock in the shared database as if nothing happened.
#[cfg(all(feature = "rabbitmq", feature = "postgres"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_two_processes_per_service_on_one_postgres_store_play_through_a_sigkill() {
    let broker = rabbitmq().await;
    let url = broker.url();
    let store = choreo_testkit::PostgresServer::shared()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .database()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let env = [("CHOREO_STORE", store.as_str()), ("RUST_LOG", "info")];
    let process = |name: &str| command(url, &env, &["--service", name]);

    let mut running = Vec::new();
    for name in ["payments", "payments", "orders"] {
        running.push(start_service(process(name), name, None).await);
    }
    let mut asking = Vec::new();
    for _ in 0..2 {
        let (lines, says) = tokio::sync::mpsc::unbounded_channel();
        let inventory = start_service(process("inventory"), "inventory", Some(lines)).await;
        asking.push((inventory, says));
    }
    let play = play(url, &env);

    // Whichever inventory process got the espresso machine's saga is killed at the supplier.
    let (first, second) = {
        let mut iter = asking.into_iter();
        (iter.next().unwrap(), iter.next().unwrap())
    };
    let (mut first_process, mut first_says) = first;
    let (mut second_process, mut second_says) = second;
    let supplier =
        |line: Option<String>| line.is_some_and(|line| line.contains("asking the supplier"));
    let first_asked = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                line = first_says.recv() => if supplier(line) { return true },
                line = second_says.recv() => if supplier(line) { return false },
            }
        }
    })
    .await
    .expect("an inventory process asked the supplier");
    let (killed, survivor) = if first_asked {
        (&mut first_process, second_process)
    } else {
        (&mut second_process, first_process)
    };
    killed.start_kill().unwrap(); // SIGKILL: no shutdown at all
    killed.wait().await.unwrap();
    running.push(survivor);
    played(play).await;

    use choreo::postgres::sqlx;
    let pool = sqlx::PgPool::connect(&store).await.unwrap();
    let credit: i64 =
        sqlx::query_scalar("SELECT available_cents FROM credit WHERE account = 'main'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        credit, 6_000,
        "10,000 cents less the completed order's 4,000"
    );
    let stock: Vec<(String, i32)> = sqlx::query_as("SELECT sku, available FROM stock ORDER BY sku")
        .fetch_all(&pool)
        .await
        .unwrap();
    let statuses: Vec<(i64, String)> =
        sqlx::query_as("SELECT order_id, status FROM order_status ORDER BY order_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [
            (1, "confirmed".to_owned()),
            (2, "cancelled".to_owned()),
            (3, "cancelled".to_owned())
        ]
    );
    let compensated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM choreo_sagas WHERE status = 'aborted' AND NOT compensation_acknowledged",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        compensated, 0,
        "every participant acknowledged its compensations"
    );
    assert_eq!(
        stock,
        [
            ("book".to_owned(), 2),
            ("espresso-machine".to_owned(), 1),
            ("vinyl".to_owned(), 0)
        ],
        "one book sold; the espresso machine, reserved or not, is back"
    );
    drop(running);
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_a_python_inventory_with_the_cloudevents_sdk_takes_part_in_the_saga() {
    let broker = rabbitmq().await;
    play_with_python_inventory(broker.url()).await;
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_python_inventory_with_the_cloudevents_sdk_takes_part_in_the_saga() {
    let (_broker, url) = kafka().await;
    play_with_python_inventory(&url).await;
}

/// `script` of this repository run by `python3`, on the broker `url` names.
fn python(script: &str, url: &str) -> tokio::process::Command {
    let python = std::process::Command::new("python3")
        .args([
            "-c",
            "import cloudevents.core.bindings.rabbitmq, aio_pika, confluent_kafka, jsonschema",
        ])
        .output();
    assert!(
        python.as_ref().is_ok_and(|output| output.status.success()),
        "python3 with the packages of tests/polyglot/requirements.txt is needed \
         (`python3 -m pip install -r tests/polyglot/requirements.txt`): {python:?}"
    );
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(script))
        .env("CHOREO_URL", url.split('?').next().unwrap_or(url))
        .kill_on_drop(true);
    command
}

/// The Rust orders and payments of the example and the Python inventory play the three
/// sagas; every event on the topic parses with the CloudEvents SDK, follows the protocol and
/// stays in its saga's trace, Python's included.
async fn play_with_python_inventory(url: &str) {
    let reader = SdkReader::start(url).await;
    let payments = start_service(
        command(url, &[], &["--service", "payments"]),
        "payments",
        None,
    )
    .await;
    let inventory = start_service(
        python("examples/polyglot/inventory.py", url),
        "inventory",
        None,
    )
    .await;

    let stdout = play_three_sagas(url, &[]).await;
    let timeline = |order: &str| {
        stdout
            .split(&format!("order {order} "))
            .nth(1)
            .and_then(|rest| rest.split("\n\n").next())
            .unwrap_or_else(|| panic!("no order {order}: {stdout}"))
            .to_owned()
    };
    assert!(
        timeline("2").contains(
            "inventory  abort        choreo.SagaAborted.v1  (rejected: vinyl is out of stock)"
        ),
        "{stdout}"
    );
    assert!(
        timeline("3").contains(
            "inventory  compensated  choreo.SagaCompensated.v1  (undid inventory.StockReserved.v1)"
        ),
        "{stdout}"
    );
    reader.assert_the_three_sagas().await;

    for mut service in [payments, inventory] {
        service.start_kill().unwrap();
        service.wait().await.unwrap();
    }
}

/// tests/polyglot/read_events.py: reads every event of the saga topic with the CloudEvents
/// SDK and checks it against the protocol of docs/wire-format.md and its JSON Schemas.
struct SdkReader {
    process: tokio::process::Child,
    says: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl SdkReader {
    /// Starts reading the topic; returns once the reader listens.
    async fn start(url: &str) -> Self {
        let mut process = python("tests/polyglot/read_events.py", url)
            .args(["--expect", "16"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut says = BufReader::new(process.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), says.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(line))) if line == "ready"),
            "the SDK reader did not start: {ready:?}"
        );
        Self { process, says }
    }

    /// Waits for the reader's verdict: the example's three sagas, sixteen events, each
    /// emitted by the service it should be, every one valid.
    async fn assert_the_three_sagas(mut self) {
        let summary = tokio::time::timeout(Duration::from_secs(60), async {
            let summary = self.says.next_line().await.unwrap();
            let status = self.process.wait().await.unwrap();
            let mut stderr = String::new();
            let mut errors = self.process.stderr.take().unwrap();
            errors.read_to_string(&mut stderr).await.unwrap();
            assert!(status.success(), "{summary:?}\n{stderr}");
            summary.unwrap_or_default()
        })
        .await
        .expect("the SDK reader finished");
        let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
        // Per saga, "<source> <sagakind> <type>" of each event; the order of the
        // acknowledgements varies, so each saga's list is compared sorted.
        let sorted = |events: Vec<String>| {
            let mut events = events;
            events.sort();
            events
        };
        let mut sagas: Vec<Vec<String>> = summary["sagas"]
            .as_object()
            .unwrap()
            .values()
            .map(|events| {
                sorted(
                    events
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|event| event.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect();
        sagas.sort();
        let saga = |events: &[&str]| sorted(events.iter().map(|e| (*e).to_owned()).collect());
        let start = [
            "orders start orders.OrderPlaced.v1",
            "payments step payments.CreditReserved.v1",
        ];
        let acknowledged = [
            "orders compensated choreo.SagaCompensated.v1",
            "payments compensated choreo.SagaCompensated.v1",
            "inventory compensated choreo.SagaCompensated.v1",
        ];
        let completed = [
            "inventory step inventory.StockReserved.v1",
            "orders complete orders.OrderConfirmed.v1",
        ];
        let rejected = ["inventory abort choreo.SagaAborted.v1"];
        let timed_out = ["orders abort choreo.SagaAborted.v1"];
        let mut expected = vec![
            saga(&[&start[..], &completed[..]].concat()),
            saga(&[&start[..], &rejected[..], &acknowledged[..]].concat()),
            saga(&[&start[..], &timed_out[..], &acknowledged[..]].concat()),
        ];
        expected.sort();
        assert_eq!(sagas, expected, "{summary}");
    }
}

async fn play_across_processes(url: &str) {
    let receiver = OtlpReceiver::start().await;
    let reader = SdkReader::start(url).await;
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut services = Vec::new();
    for name in ["payments", "inventory"] {
        let started = start_service(command(url, &otlp, &["--service", name]), name, None);
        services.push(started.await);
    }

    let stdout = play_three_sagas(url, &otlp).await;
    reader.assert_the_three_sagas().await;

    // Ctrl-C: each service shuts down and flushes what it has not exported yet.
    for child in &mut services {
        let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the service stopped on Ctrl-C")
            .unwrap();
        assert!(status.success(), "{status:?}");
    }

    let sagas: BTreeSet<String> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("saga "))
        .map(str::to_owned)
        .collect();
    assert_eq!(sagas.len(), 3, "{stdout}");
    receiver.assert_one_trace_per_saga(&sagas);
    receiver.assert_outcomes_counted();
}

/// Runs the example's orders service with `--play` and returns its output, once it is
/// checked that the play ended well and each of its three sagas as it should.
async fn play_three_sagas(url: &str, env: &[(&str, &str)]) -> String {
    played(play(url, env)).await
}

/// The orders process that plays the three sagas, started.
fn play(url: &str, env: &[(&str, &str)]) -> tokio::process::Child {
    command(url, env, &["--service", "orders", "--play"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What `play` printed, once it finished, having played the three sagas as expected.
async fn played(play: tokio::process::Child) -> String {
    let output = tokio::time::timeout(Duration::from_secs(120), play.wait_with_output())
        .await
        .expect("the play finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for outcome in [
        "order 1 (should complete): COMPLETED",
        "order 2 (should be rejected (out of stock) and compensated): COMPENSATED (rejected)",
        "order 3 (should time out (slow supplier) and be compensated): COMPENSATED (timed out)",
    ] {
        assert!(stdout.contains(outcome), "{stdout}");
    }
    stdout
}

/// A minimal OTLP/HTTP (protobuf) receiver: keeps what it is sent, answers `200 OK`.
struct OtlpReceiver {
    endpoint: String,
    received: Arc<Mutex<Received>>,
}

#[derive(Default)]
struct Received {
    /// `(service.name, span)` of every span.
    spans: Vec<(String, Span)>,
    /// Every metrics export, in arrival order.
    metrics: Vec<ExportMetricsServiceRequest>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&sink)));
            }
        });
        Self { endpoint, received }
    }

    fn assert_one_trace_per_saga(&self, sagas: &BTreeSet<String>) {
        let received = self.received.lock().unwrap();
        let services: BTreeSet<&str> = received.spans.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            services,
            BTreeSet::from(["inventory", "orders", "payments"])
        );

        // The sagas' spans; the broker clients' own spans, if any, are traces of their own.
        let mut traces: HashMap<&[u8], Vec<&(String, Span)>> = HashMap::new();
        for entry in &received.spans {
            if string_attribute(&entry.1.attributes, "saga.id").is_some() {
                traces.entry(&entry.1.trace_id).or_default().push(entry);
            }
        }
        let mut traced_sagas = BTreeSet::new();
        for spans in traces.values() {
            let saga_ids: BTreeSet<String> = spans
                .iter()
                .filter_map(|(_, span)| string_attribute(&span.attributes, "saga.id"))
                .collect();
            assert_eq!(saga_ids.len(), 1, "one trace, one saga: {saga_ids:?}");
            traced_sagas.extend(saga_ids);

            // One tree: a single root, the initiating publish, and every parent in the
            // trace, whichever process sent it.
            let ids: BTreeSet<&[u8]> = spans
                .iter()
                .map(|(_, span)| span.span_id.as_slice())
                .collect();
            let roots: Vec<_> = spans
                .iter()
                .filter(|(_, span)| span.parent_span_id.is_empty())
                .collect();
            assert_eq!(roots.len(), 1);
            assert_eq!(roots[0].0, "orders");
            assert_eq!(roots[0].1.name, "send orders.OrderPlaced.v1");
            for (service, span) in spans {
                assert!(
                    span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_slice()),
                    "the parent of {service}'s `{}` is missing",
                    span.name
                );
            }
            let services: BTreeSet<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
            assert_eq!(
                services,
                BTreeSet::from(["inventory", "orders", "payments"]),
                "every process took part in every saga"
            );
        }
        assert_eq!(&traced_sagas, sagas);
        assert_eq!(traces.len(), 3);
    }

    /// The initiator's last metrics export counts one saga per outcome.
    fn assert_outcomes_counted(&self) {
        let received = self.received.lock().unwrap();
        let from_orders = received
            .metrics
            .iter()
            .rfind(|request| {
                request.resource_metrics.iter().any(|resource| {
                    resource
                        .resource
                        .as_ref()
                        .and_then(|r| string_attribute(&r.attributes, "service.name"))
                        == Some("orders".to_owned())
                })
            })
            .expect("orders exported metrics");
        let mut ended = BTreeSet::new();
        for metric in from_orders
            .resource_metrics
            .iter()
            .flat_map(|resource| &resource.scope_metrics)
            .flat_map(|scope| &scope.metrics)
            .filter(|metric| metric.name == "choreo.saga.ended")
        {
            let Some(metric::Data::Sum(sum)) = &metric.data else {
                panic!("choreo.saga.ended is a sum");
            };
            for point in &sum.data_points {
                let outcome = string_attribute(&point.attributes, "saga.outcome").unwrap();
                assert_eq!(
                    point.value,
                    Some(number_data_point::Value::AsInt(1)),
                    "{outcome}"
                );
                ended.insert(outcome);
            }
        }
        assert_eq!(
            ended,
            BTreeSet::from(["completed", "compensated", "timed_out"].map(String::from))
        );
    }
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(value) => Some(value.clone()),
            _ => None,
        }
    })
}

/// Serves one keep-alive connection: `POST /v1/traces` and `POST /v1/metrics`.
async fn serve(stream: TcpStream, received: Arc<Mutex<Received>>) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            stream.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        {
            let mut received = received.lock().unwrap();
            match path.as_str() {
                "/v1/traces" => {
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .as_ref()
                            .and_then(|r| string_attribute(&r.attributes, "service.name"))
                            .unwrap_or_default();
                        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                            received.spans.push((service.clone(), span));
                        }
                    }
                }
                "/v1/metrics" => received
                    .metrics
                    .push(ExportMetricsServiceRequest::decode(body.as_slice()).unwrap()),
                other => panic!("unexpected OTLP path {other}"),
            }
        }
        stream
            .get_mut()
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )
            .await?;
    }
}

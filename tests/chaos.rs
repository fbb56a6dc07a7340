//! The chaos run of `examples/chaos`, shorter and seeded, on every transport: sagas of the
//! order services under duplicated, delayed and dropped deliveries (on memory also reordered
//! within a saga), lost acknowledgements, failed publishes and commits, outages, slow
//! handlers and services killed at random instants, with RabbitMQ restarted twice and Kafka
//! paused twice mid-run. Every saga must end completed or compensated: none lost, no double
//! effect, no orphan. And the checker must see faults where there are some: with an inbox
//! that forgets what it handled, it reports double effects.
//!
//! `CHOREO_CHAOS_SAGAS` sets the number of sagas of the broker runs (300 by default).
#![cfg(feature = "sqlite")]

#[allow(dead_code)]
#[path = "../examples/chaos/checker.rs"]
mod checker;
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
#[path = "common/logs.rs"]
mod logs;
#[allow(dead_code)]
#[path = "../examples/chaos/run.rs"]
mod run;
#[allow(dead_code)]
#[path = "../examples/chaos/services.rs"]
mod services;

use std::sync::Arc;
use std::time::Duration;

use run::{Disruption, Report, Settings};

const SEED: u64 = 20_261_206;

async fn run_in_fresh_files(
    transport: Arc<dyn choreo::Transport>,
    settings: &Settings,
    disruptions: &[Disruption],
) -> Report {
    let dir = std::env::temp_dir().join(format!(
        "choreo-chaos-test-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let report = run::run(transport, &dir, settings, disruptions)
        .await
        .unwrap();
    println!("seed {}: {report}", settings.seed);
    if report.verdicts.is_clean() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("the services' files are kept in {}", dir.display());
    }
    report
}

fn assert_clean(report: &Report, sagas: u64) {
    let verdicts = &report.verdicts;
    assert!(verdicts.is_clean(), "{verdicts}: {:#?}", verdicts.examples);
    assert_eq!(verdicts.completed + verdicts.compensated, sagas as usize);
    // Every kind of outcome happened, and the faults did too.
    assert!(
        verdicts.completed > 0 && verdicts.compensated > 0,
        "{verdicts}"
    );
    let faults = report.faults;
    assert!(
        faults.duplicated > 0
            && faults.delayed > 0
            && faults.dropped > 0
            && faults.lost_acks > 0
            && faults.failed_publishes > 0
            && faults.failed_store_calls > 0,
        "{faults}"
    );
    assert!(report.kills > 0);
}

#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
fn broker_sagas() -> u64 {
    std::env::var("CHOREO_CHAOS_SAGAS")
        .ok()
        .and_then(|sagas| sagas.parse().ok())
        .unwrap_or(300)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_memory_every_saga_ends_completed_or_compensated_once() {
    let mut settings = Settings::new(1_000, SEED);
    // The run takes seconds: kills come more often, for a dozen of them.
    settings.kill_every = Duration::from_millis(300);
    let report = run_in_fresh_files(run::memory_broker(&settings), &settings, &[]).await;
    assert_clean(&report, settings.sagas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_double_effects_when_the_inbox_forgets_what_it_handled() {
    let mut settings = Settings::new(300, SEED);
    settings.rates.forget_handled = true;
    let report = run_in_fresh_files(run::memory_broker(&settings), &settings, &[]).await;
    let verdicts = &report.verdicts;
    assert!(!verdicts.is_clean(), "{verdicts}");
    assert!(verdicts.double_effects > 0, "{verdicts}");
    assert!(
        verdicts
            .examples
            .iter()
            .any(|example| example.contains("double effect")),
        "{:#?}",
        verdicts.examples
    );
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_restarted_twice_every_saga_ends_completed_or_compensated_once() {
    logs::show_logs();
    let broker = Arc::new(choreo_testkit::RabbitMqBroker::start().await.unwrap());
    let transport = choreo::connect(broker.url()).await.unwrap();
    let restart: Disruption = Arc::new(move |n| {
        let broker = Arc::clone(&broker);
        Box::pin(async move {
            broker.restart().await.unwrap();
            println!("RabbitMQ restarted ({n} of 2)");
        })
    });
    let settings = Settings::new(broker_sagas(), SEED);
    let report = run_in_fresh_files(transport, &settings, &[Arc::clone(&restart), restart]).await;
    assert_eq!(report.disruptions, 2);
    assert_clean(&report, settings.sagas);
}

/// How long Kafka stays paused each time.
#[cfg(feature = "kafka")]
const PAUSE: Duration = Duration::from_secs(3);

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_paused_twice_every_saga_ends_completed_or_compensated_once() {
    logs::show_logs();
    let broker = Arc::new(choreo_testkit::KafkaBroker::start().await.unwrap());
    let transport = choreo::connect(broker.url()).await.unwrap();
    let pause: Disruption = Arc::new(move |n| {
        let broker = Arc::clone(&broker);
        Box::pin(async move {
            broker.pause().await.unwrap();
            tokio::time::sleep(PAUSE).await;
            broker.unpause().await.unwrap();
            println!("Kafka paused for {PAUSE:?} ({n} of 2)");
        })
    });
    let settings = Settings::new(broker_sagas(), SEED);
    let report = run_in_fresh_files(transport, &settings, &[Arc::clone(&pause), pause]).await;
    assert_eq!(report.disruptions, 2);
    assert_clean(&report, settings.sagas);
}

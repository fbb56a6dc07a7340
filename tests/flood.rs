//! A flood of events of a type no service handles, on each broker: the services take them
//! off the topic and go on, and the process's memory does not grow with their number. Alone
//! in its test binary, and one broker after the other, since it measures the whole process.
#![cfg(any(feature = "kafka", feature = "rabbitmq"))]

mod common;

use std::time::Duration;

use choreo::{AbortReason, Event, SagaId, SagaKind};
use common::*;

/// Kafka, then RabbitMQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_events_of_a_type_nobody_handles_passes_in_bounded_memory() {
    #[cfg(feature = "kafka")]
    floods_pass_in_bounded_memory(Backend::KAFKA).await;
    #[cfg(feature = "rabbitmq")]
    floods_pass_in_bounded_memory(Backend::RABBITMQ).await;
}

/// An event type no service handles.
#[derive(Debug, serde::Serialize, serde::Deserialize, Event)]
#[event(name = "stranger.Noise.v1")]
struct Noise {
    n: u32,
}

/// The process's resident memory, in MiB.
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Two floods of fifty thousand events of a type no service handles, each of one saga and
/// followed by an abort of that saga: every service takes each event off the topic without
/// keeping anything (no record, no task), reaches the abort behind them, and acknowledges it
/// with a tombstone. The process's resident memory is printed (machine-readable) before,
/// between and after; the second flood must not grow it much further than the first left it
/// (the allocator and the broker clients keep what the first one made them take), so memory
/// does not grow with the number of events. The test's own observer, which keeps every
/// event, is stopped first.
async fn floods_pass_in_bounded_memory(backend: Backend) {
    const FLOOD: u32 = 50_000;
    let mut h = Harness::start(backend).await;
    let quiet = choreo::Saga::new("quiet.saga");
    h.log = choreo::SagaLog::start(std::sync::Arc::clone(&h.transport), &quiet, "quiet")
        .await
        .unwrap();
    let mut resident = vec![resident_mib()];
    for _ in 0..2 {
        flood(&h, backend, FLOOD).await;
        resident.push(resident_mib());
    }
    println!(
        "{{\"test\":\"flood\",\"transport\":\"{:?}\",\"events_per_flood\":{FLOOD},\"rss_mib\":{resident:?}}}",
        backend.via
    );
    assert!(
        resident[2].saturating_sub(resident[1]) < 64,
        "resident memory went {resident:?} MiB over two floods"
    );
}

/// `events` events of a type nobody handles, of one saga, then an abort of it; returns once
/// every service acknowledged the abort with nothing kept.
async fn flood(h: &Harness, backend: Backend, events: u32) {
    let saga = SagaId::new();
    let deadline = h.deadline_in(backend.units(200));
    let mut published = 0;
    while published < events {
        let next = events.min(published + 1_000);
        let batch = (published..next)
            .map(|n| h.publish(h.event("stranger", saga, deadline, SagaKind::Step, &Noise { n })));
        futures_util::future::join_all(batch).await;
        published = next;
    }
    h.publish(h.abort_event(saga, deadline, AbortReason::Rejected))
        .await;
    for service in SERVICES {
        let started = tokio::time::Instant::now();
        loop {
            let record = h.record(service, saga).await;
            if let Some(record) = record.filter(|record| record.compensation_acknowledged) {
                // Only the abort left a mark: a tombstone with no step and nothing kept.
                assert!(record.steps.is_empty(), "{service}");
                break;
            }
            assert!(
                started.elapsed() < backend.units(600),
                "{service} never reached the abort behind the flood"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

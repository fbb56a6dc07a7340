//! The saga console's monitor beside the harness's services: how the console tests start
//! one and wait for what it shows.

use std::sync::Arc;
use std::time::Duration;

use choreo::SagaId;
use choreo_monitor::model::{SagaDetail, Status};
use choreo_monitor::{Monitor, MonitorStore, RunningMonitor, StuckAfter};

use super::{Harness, TOPIC};

/// A monitor of the harness's topic, recording into `store`.
pub async fn monitor(h: &Harness, store: MonitorStore) -> RunningMonitor {
    Monitor::new(Arc::clone(&h.transport), TOPIC)
        .store(store)
        .clock(Arc::new(h.clock.clone()))
        .stuck_after(StuckAfter {
            deadline_grace: h.units(5),
            compensation: h.units(20),
        })
        .start("127.0.0.1:0")
        .await
        .unwrap()
}

/// Waits (up to 200 units) until the monitor shows `saga` with every event the saga log
/// holds, and `status`.
pub async fn shown(
    h: &Harness,
    monitor: &RunningMonitor,
    saga: SagaId,
    status: Status,
) -> SagaDetail {
    shown_within(h, monitor, saga, status, h.units(200)).await
}

/// [`shown`], waiting at most `within`.
pub async fn shown_within(
    h: &Harness,
    monitor: &RunningMonitor,
    saga: SagaId,
    status: Status,
    within: Duration,
) -> SagaDetail {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let events = ids(h, saga).len();
        let detail = monitor.views().saga(&saga.to_string()).await.unwrap();
        if let Some(detail) = detail {
            if detail.summary.status == status && detail.events.len() == events {
                return detail;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "saga {saga} never showed as {status} with {events} events: {detail:#?}"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "saga {saga} never shown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the saga's events in the order they were emitted, as the monitor shows them
/// (events emitted at the same instant in the order they arrived), each once: the log keeps
/// every delivery, a republished event (a service restarted before its outbox knew it sent)
/// included, and the monitor records an event once.
pub fn ids(h: &Harness, saga: SagaId) -> Vec<String> {
    let mut events = h.log.events(saga);
    events.sort_by_key(|event| event.time);
    let mut ids: Vec<String> = Vec::new();
    for event in events {
        let id = event.id.to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

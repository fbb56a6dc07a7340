//! The hand-written baseline: the same hops with serde_json over tokio channels, no saga
//! logic (no inbox, journal, deadlines or envelope).

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use uuid::Uuid;

use crate::events::{Payload, Probe, EVENTS_PER_SAGA};
use crate::report::Run;

/// What a hand-written service would put on the wire: a type, ids, the data.
#[derive(Serialize, Deserialize)]
pub(crate) struct RawEvent {
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) saga_id: Uuid,
    pub(crate) event_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) data: Payload,
}

impl RawEvent {
    pub(crate) fn first(data: Payload) -> Self {
        Self {
            event_type: "Placed".to_owned(),
            saga_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            causation_id: None,
            data,
        }
    }

    pub(crate) fn caused(&self, event_type: &str, data: Payload) -> Self {
        Self {
            event_type: event_type.to_owned(),
            saga_id: self.saga_id,
            event_id: Uuid::now_v7(),
            causation_id: Some(self.event_id),
            data,
        }
    }
}

/// What `service` does with `event`: the next event of the saga, if any, and whether it
/// ends the saga. Shared by every raw baseline.
pub(crate) fn react(service: &str, event: &RawEvent, probe: &Probe) -> Option<RawEvent> {
    match (service, event.event_type.as_str()) {
        ("beta", "Placed") => Some(event.caused("Reserved", probe.next(&event.data))),
        ("gamma", "Reserved") => Some(event.caused("Shipped", probe.next(&event.data))),
        ("alpha", "Shipped") => {
            let confirmed = event.caused("Confirmed", probe.next(&event.data));
            probe.complete();
            Some(confirmed)
        }
        _ => None,
    }
}

pub(crate) async fn play(sagas: usize, window: usize, record_latency: bool) -> Run {
    let probe = Probe::new(window, record_latency, None);
    let (alpha_tx, mut alpha_rx) = unbounded_channel::<Vec<u8>>();
    let (beta_tx, mut beta_rx) = unbounded_channel::<Vec<u8>>();
    let (gamma_tx, mut gamma_rx) = unbounded_channel::<Vec<u8>>();
    let everyone = [alpha_tx.clone(), beta_tx.clone(), gamma_tx.clone()];

    let service = |name: &'static str, to: Vec<UnboundedSender<Vec<u8>>>, probe: Arc<Probe>| {
        move |bytes: Vec<u8>| {
            let event: RawEvent = serde_json::from_slice(&bytes).expect("valid JSON");
            if let Some(next) = react(name, &event, &probe) {
                let bytes = serde_json::to_vec(&next).expect("encodes");
                for sender in &to {
                    let _ = sender.send(bytes.clone());
                }
            }
        }
    };
    let alpha = service("alpha", everyone.to_vec(), Arc::clone(&probe));
    let beta = service("beta", vec![gamma_tx.clone()], Arc::clone(&probe));
    let gamma = service("gamma", vec![alpha_tx.clone()], Arc::clone(&probe));
    let tasks = [
        tokio::spawn(async move {
            while let Some(bytes) = alpha_rx.recv().await {
                alpha(bytes);
            }
        }),
        tokio::spawn(async move {
            while let Some(bytes) = beta_rx.recv().await {
                beta(bytes);
            }
        }),
        tokio::spawn(async move {
            while let Some(bytes) = gamma_rx.recv().await {
                gamma(bytes);
            }
        }),
    ];

    let started = Instant::now();
    for n in 0..sagas {
        probe.admit().await;
        let first = RawEvent::first(probe.payload(n as u64));
        beta_tx
            .send(serde_json::to_vec(&first).expect("encodes"))
            .expect("beta runs");
    }
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    Run::new(sagas * EVENTS_PER_SAGA, elapsed, probe.latencies())
}

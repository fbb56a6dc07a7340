//! Reads the saga topic and its dead letters as a consumer group of the monitor's own, and
//! records what arrives in batches: a delivery is acknowledged only once its batch is
//! committed, so a monitor killed at any point loses nothing, and recording is idempotent, so
//! what comes again counts once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use choreo_core::{Delivery, Envelope, Subscription, TransportError};
use tokio::sync::mpsc;
use tracing::warn;

use crate::store::{MonitorStore, Record};

/// At most this many deliveries go into one store transaction.
const BATCH: usize = 512;

/// How many events and dead letters the monitor recorded since it started, new ones only.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) received: AtomicU64,
    pub(crate) added: AtomicU64,
}

/// Reads `subscription` into `deliveries`; `dead_letters` says what the topic carries.
pub(crate) async fn read(
    mut subscription: Box<dyn Subscription>,
    dead_letters: bool,
    deliveries: mpsc::Sender<(Delivery, bool)>,
) {
    loop {
        match subscription.next().await {
            Ok(delivery) => {
                if deliveries.send((delivery, dead_letters)).await.is_err() {
                    return;
                }
            }
            Err(TransportError::Closed) => return,
            Err(error) => {
                warn!(%error, "monitor cannot receive; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Records what `deliveries` brings, a batch at a time, then acknowledges the batch.
pub(crate) async fn record(
    store: MonitorStore,
    mut deliveries: mpsc::Receiver<(Delivery, bool)>,
    recorded: Arc<Recorded>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while deliveries.recv_many(&mut batch, BATCH).await > 0 {
        let records: Arc<Vec<Record>> = Arc::new(
            batch
                .iter()
                .filter_map(|(delivery, dead_letter)| {
                    if *dead_letter {
                        Some(Record::DeadLetter((*delivery.message).clone()))
                    } else {
                        // A malformed event is the services' to dead-letter; its dead letter is
                        // what the monitor records.
                        Envelope::decode(&delivery.message).ok().map(Record::Event)
                    }
                })
                .collect(),
        );
        let received = batch.len() as u64;
        loop {
            match store.record(Arc::clone(&records)).await {
                Ok(added) => {
                    recorded.received.fetch_add(received, Ordering::Relaxed);
                    recorded.added.fetch_add(added as u64, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    warn!(%error, "monitor cannot record; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        for (delivery, _) in batch.drain(..) {
            if let Err(error) = delivery.ack().await {
                // Unacknowledged, it comes again and is recorded once.
                warn!(%error, "monitor cannot acknowledge");
            }
        }
    }
}

//! The benchmark's saga: three steps over three services, as in the order saga.
//!
//! ```text
//! alpha: Placed -> beta: Reserved -> gamma: Shipped -> alpha: Confirmed (terminal)
//! ```
//! Four events per saga. Every payload carries the time it was sent, so the handler of the
//! next hop can measure the hop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo::{
    Context, Event, HandlerError, Saga, Service, ServiceBuilder, Step, StepResult, Store,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

/// Events published per saga.
pub(crate) const EVENTS_PER_SAGA: usize = 4;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Payload {
    pub(crate) n: u64,
    pub(crate) sku: String,
    pub(crate) amount_cents: u64,
    /// Nanoseconds since the probe's epoch when the event was sent.
    pub(crate) sent_ns: u64,
}

macro_rules! event {
    ($name:ident, $type:literal) => {
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub(crate) struct $name(pub(crate) Payload);
        impl Event for $name {
            const TYPE: &'static str = $type;
        }
    };
}

event!(Placed, "bench.Placed.v1");
event!(Reserved, "bench.Reserved.v1");
event!(Shipped, "bench.Shipped.v1");
event!(Confirmed, "bench.Confirmed.v1");

pub(crate) fn saga(topic: &str, timeout: Duration) -> Saga {
    Saga::new(topic)
        .timeout(timeout)
        // `alpha` alone ends the saga: its queue leaves the event out.
        .completes_on_from::<Confirmed>("alpha")
}

/// What the services report to the driver: completions (which open the window for the next
/// saga), hop latencies when asked for, and a gate that holds `beta`'s step while closed.
pub(crate) struct Probe {
    epoch: Instant,
    window: Arc<Semaphore>,
    completed: AtomicUsize,
    target: AtomicUsize,
    all_done: Notify,
    latencies: Option<Mutex<Vec<u64>>>,
    gate: Option<Arc<Notify>>,
}

impl Probe {
    pub(crate) fn new(window: usize, record_latency: bool, gate: Option<Arc<Notify>>) -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            window: Arc::new(Semaphore::new(window)),
            completed: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            all_done: Notify::new(),
            latencies: record_latency.then(Mutex::default),
            gate,
        })
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn payload(&self, n: u64) -> Payload {
        Payload {
            n,
            sku: format!("sku-{}", n % 100),
            amount_cents: 1_000 + n % 5_000,
            sent_ns: self.now_ns(),
        }
    }

    pub(crate) fn next(&self, received: &Payload) -> Payload {
        let now = self.now_ns();
        if let Some(latencies) = &self.latencies {
            latencies
                .lock()
                .unwrap()
                .push(now.saturating_sub(received.sent_ns));
        }
        Payload {
            sent_ns: now,
            sku: received.sku.clone(),
            ..*received
        }
    }

    /// Waits for a free place in the window of sagas in flight.
    pub(crate) async fn admit(&self) {
        self.window.acquire().await.unwrap().forget();
    }

    pub(crate) fn complete(&self) {
        self.window.add_permits(1);
        let completed = self.completed.fetch_add(1, Ordering::AcqRel) + 1;
        if completed >= self.target.load(Ordering::Acquire) {
            self.all_done.notify_one();
        }
    }

    /// Waits until `target` sagas completed.
    pub(crate) async fn wait_for(&self, target: usize) {
        self.target.store(target, Ordering::Release);
        while self.completed.load(Ordering::Acquire) < target {
            self.all_done.notified().await;
        }
    }

    pub(crate) fn latencies(&self) -> Vec<u64> {
        self.latencies
            .as_ref()
            .map(|l| l.lock().unwrap().clone())
            .unwrap_or_default()
    }

    async fn pass_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
    }
}

/// Starts sagas `0..sagas` from `callers` tasks at once, as the concurrent requests an
/// initiating service serves would, each admitted by `probe`'s window first; returns once
/// every start returned. One caller serialises the starts on whatever a start waits for (a
/// broker's acknowledgement, a store's commit).
pub(crate) async fn start_from<F, Fut>(probe: &Arc<Probe>, sagas: usize, callers: usize, start: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (probe, start) = (Arc::clone(probe), start.clone());
            tokio::spawn(async move {
                for n in (caller..sagas).step_by(callers) {
                    probe.admit().await;
                    start(n as u64).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller finished");
    }
}

async fn undo<E>(_done: E, _cx: Context) -> Result<(), HandlerError> {
    Ok(())
}

/// The three services of the saga, each with its compensation so that deadlines are armed,
/// each keeping its state in the store `stores` gives for its name.
pub(crate) fn services(
    saga: &Saga,
    probe: &Arc<Probe>,
    stores: impl Fn(&str) -> Arc<dyn Store>,
) -> [(&'static str, Service); 3] {
    let build = |builder: ServiceBuilder| builder.build().expect("the benchmark saga is valid");
    let alpha = {
        let probe = Arc::clone(probe);
        Service::builder("alpha", saga)
            .store(stores("alpha"))
            .initiates::<Placed>()
            .compensate(undo::<Placed>)
            .step(move |shipped: Shipped, _cx: Context| {
                let probe = Arc::clone(&probe);
                async move {
                    let next = probe.next(&shipped.0);
                    probe.complete();
                    StepResult::Ok(Step::done(Confirmed(next)))
                }
            })
    };
    let beta = {
        let probe = Arc::clone(probe);
        Service::builder("beta", saga)
            .store(stores("beta"))
            .step(move |placed: Placed, _cx: Context| {
                let probe = Arc::clone(&probe);
                async move {
                    probe.pass_gate().await;
                    StepResult::Ok(Step::done(Reserved(probe.next(&placed.0))))
                }
            })
            .compensate(undo::<Reserved>)
    };
    let gamma = {
        let probe = Arc::clone(probe);
        Service::builder("gamma", saga)
            .store(stores("gamma"))
            .step(move |reserved: Reserved, _cx: Context| {
                let probe = Arc::clone(&probe);
                async move { StepResult::Ok(Step::done(Shipped(probe.next(&reserved.0)))) }
            })
            .compensate(undo::<Shipped>)
    };
    [
        ("alpha", build(alpha)),
        ("beta", build(beta)),
        ("gamma", build(gamma)),
    ]
}

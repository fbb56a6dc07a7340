//! The saga console's monitor (`choreo-monitor`) recording the saga topic into a SQLite file,
//! as a user runs it: beside the services during a run, and alone on events published before
//! it starts, which is its own ceiling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use choreo::memory::MemoryTransport;
use choreo::{Deadline, Envelope, EventId, SagaData, SagaId, SagaKind, TraceContext, Transport};
use choreo_monitor::{Monitor, MonitorStore, RunningMonitor, DEFAULT_GROUP};
use serde_json::value::RawValue;

use crate::events::{Payload, EVENTS_PER_SAGA};
use crate::report::{Report, Row, Run};

/// How often the driver looks at what the monitor recorded: the resolution of the lag.
const POLL: Duration = Duration::from_millis(1);

/// What the monitor did over one run.
pub(crate) struct Ingest {
    /// Events of the run it had to record.
    pub(crate) events: usize,
    /// From the run's start until it had recorded all of them (or until it was given up on).
    pub(crate) recorded_after: Duration,
    /// From the last saga's end until it had recorded every event: `None` when it had not
    /// within the time allowed.
    pub(crate) lag: Option<Duration>,
    /// Events it recorded, when it was given up on.
    pub(crate) recorded: usize,
}

impl Ingest {
    /// Events recorded per second over the run.
    pub(crate) fn events_per_second(&self) -> f64 {
        self.recorded as f64 / self.recorded_after.as_secs_f64()
    }

    pub(crate) fn lag_ms(&self) -> f64 {
        self.lag.map_or(f64::NAN, |lag| lag.as_secs_f64() * 1_000.0)
    }
}

/// A monitor recording a topic into a SQLite file of a temporary directory of its own.
pub(crate) struct Watch {
    monitor: RunningMonitor,
    directory: PathBuf,
}

impl Watch {
    /// Starts a monitor of `topic`, as `choreo monitor --store sqlite://FILE` would.
    pub(crate) async fn start(transport: Arc<dyn Transport>, topic: &str) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let directory = std::env::temp_dir().join(format!(
            "choreo-bench-monitor-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let url = format!("sqlite://{}/monitor.db", directory.display());
        let store =
            MonitorStore::open(&url).unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
        let monitor = Monitor::new(transport, topic)
            .store(store)
            .start("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("the monitor does not start: {error}"));
        Self { monitor, directory }
    }

    /// Waits until the monitor recorded `events` events of the run started at `started`
    /// beside `others` published before it (the services' descriptions), the last saga having
    /// ended at `ended`; gives up after `patience`.
    pub(crate) async fn wait_for(
        &self,
        events: usize,
        others: usize,
        started: Instant,
        ended: Instant,
        patience: Duration,
    ) -> Ingest {
        let total = (events + others) as u64;
        loop {
            let (_, new) = self.monitor.recorded();
            let now = Instant::now();
            if new >= total {
                return Ingest {
                    events,
                    recorded_after: now - started,
                    lag: Some(now.saturating_duration_since(ended)),
                    recorded: events,
                };
            }
            if now - ended > patience {
                return Ingest {
                    events,
                    recorded_after: now - started,
                    lag: None,
                    recorded: (new as usize).saturating_sub(others),
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Events in its store: checks that what it counted is what it holds.
    pub(crate) async fn stored(&self) -> usize {
        let (events, _) = self
            .monitor
            .store()
            .counts()
            .await
            .unwrap_or_else(|error| panic!("the monitor's store: {error}"));
        events
    }

    /// Stops the monitor and removes its file.
    pub(crate) async fn stop(self) {
        self.monitor.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// The monitor alone: `sagas` sagas' events published to a memory topic before it starts,
/// in waves of `window` sagas (each saga's start, then each one's next step, ...) as a run
/// with that many in flight publishes them, then timed from its start until it recorded all.
pub(crate) async fn ceiling(sagas: usize, window: usize) -> Ingest {
    let topic = "bench.monitor.ceiling";
    let memory = MemoryTransport::new();
    let transport: Arc<dyn Transport> = Arc::new(memory.clone());
    // The monitor's group, durable, so that it receives what is published before it starts.
    drop(
        transport
            .subscribe(DEFAULT_GROUP, &[topic.to_owned()])
            .await
            .expect("the monitor's group"),
    );
    let sagas: Vec<SagaId> = (0..sagas).map(|_| SagaId::new()).collect();
    for wave in sagas.chunks(window) {
        let traces: Vec<TraceContext> = wave.iter().map(|_| TraceContext::new_root()).collect();
        let mut causes: Vec<Option<EventId>> = vec![None; wave.len()];
        for (hop, (source, event_type, kind)) in HOPS.into_iter().enumerate() {
            for (index, saga) in wave.iter().enumerate() {
                let envelope = event(
                    *saga,
                    causes[index],
                    &traces[index],
                    (source, event_type, kind),
                    hop as u64,
                );
                causes[index] = Some(envelope.id);
                transport
                    .publish(topic, envelope)
                    .await
                    .expect("published in memory");
            }
        }
    }
    let events = sagas.len() * EVENTS_PER_SAGA;
    let started = Instant::now();
    let watch = Watch::start(transport, topic).await;
    let ingest = watch
        .wait_for(events, 0, started, started, Duration::from_secs(600))
        .await;
    let stored = watch.stored().await;
    assert_eq!(stored, ingest.recorded, "the monitor holds what it counted");
    watch.stop().await;
    memory.close();
    ingest
}

/// The saga's events: who publishes them, their types and kinds.
const HOPS: [(&str, &str, SagaKind); EVENTS_PER_SAGA] = [
    ("alpha", "bench.Placed.v1", SagaKind::Start),
    ("beta", "bench.Reserved.v1", SagaKind::Step),
    ("gamma", "bench.Shipped.v1", SagaKind::Step),
    ("alpha", "bench.Confirmed.v1", SagaKind::Complete),
];

/// One event of `saga` as the runtime publishes it, with the benchmark's payload.
fn event(
    saga: SagaId,
    cause: Option<EventId>,
    trace: &TraceContext,
    (source, event_type, kind): (&str, &str, SagaKind),
    n: u64,
) -> Envelope {
    let now = SystemTime::now();
    let payload = Payload {
        n,
        sku: format!("sku-{}", n % 100),
        amount_cents: 1_000 + n % 5_000,
        sent_ns: 0,
    };
    let data = serde_json::to_string(&payload).expect("a payload encodes");
    Envelope {
        id: EventId::new(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        time: now,
        saga_id: saga,
        causation_id: cause,
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(3_600)),
        kind,
        trace: trace.clone(),
        data: RawValue::from_string(data).expect("JSON"),
        saga_data: SagaData::new(),
    }
}

/// The names of one transport's rows of the monitor's figures.
pub(crate) struct Keys {
    pub(crate) transport: &'static str,
    pub(crate) with_monitor: &'static str,
    pub(crate) with_monitor_what: &'static str,
    pub(crate) ingest: &'static str,
    pub(crate) ingest_what: &'static str,
    pub(crate) lag: &'static str,
    pub(crate) lag_what: &'static str,
}

/// The rows of the monitor beside the services of transport `$transport`.
macro_rules! keys {
    ($transport:literal) => {
        $crate::monitor::Keys {
            transport: $transport,
            with_monitor: concat!($transport, "_monitored_events_per_second"),
            with_monitor_what: concat!($transport, ": saga events/s, monitor beside (vs without)"),
            ingest: concat!($transport, "_monitor_ingest_events_per_second"),
            ingest_what: concat!(
                $transport,
                ": monitor ingest, events recorded/s (vs saga events/s)"
            ),
            lag: concat!($transport, "_monitor_lag_ms"),
            lag_what: concat!($transport, ": monitor lag after the last saga ended"),
        }
    };
}
pub(crate) use keys;

/// The monitor kept up if it recorded at least this share of the saga event rate: its lag
/// when the last saga ended was at most a ninth of the run.
const KEPT_UP: f64 = 0.9;

/// Reports the monitored runs of one transport: the saga throughput with the monitor beside
/// against `without` (the same runs without it), the monitor's ingest rate against the saga
/// event rate of its run, and its lag; the run of the median ingest rate, every run in a note.
pub(crate) fn report(report: &mut Report, keys: &Keys, without: f64, mut runs: Vec<(Run, Ingest)>) {
    runs.sort_by(|(_, a), (_, b)| a.events_per_second().total_cmp(&b.events_per_second()));
    report.notes.push(format!(
        "{} with the monitor, run by run: {}",
        keys.transport,
        runs.iter()
            .map(|(run, ingest)| describe(run, ingest))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    let middle = runs.len() / 2;
    let (run, ingest) = runs.swap_remove(middle);
    report.add(Row {
        key: keys.with_monitor,
        what: keys.with_monitor_what,
        unit: "events/s",
        choreo: run.events_per_second(),
        raw: Some(without),
        target: None,
    });
    let saga_rate = run.events_per_second();
    let kept_up = ingest.lag.is_some() && ingest.events_per_second() >= KEPT_UP * saga_rate;
    report.add(Row {
        key: keys.ingest,
        what: keys.ingest_what,
        unit: "events/s",
        choreo: ingest.events_per_second(),
        raw: Some(saga_rate),
        target: Some((format!("kept up: >= {KEPT_UP} of saga events/s"), kept_up)),
    });
    report.add(Row {
        key: keys.lag,
        what: keys.lag_what,
        unit: "ms",
        choreo: ingest.lag_ms(),
        raw: None,
        target: None,
    });
}

fn describe(run: &Run, ingest: &Ingest) -> String {
    let recorded = match ingest.lag {
        Some(lag) => format!("lag {:.0} ms", lag.as_secs_f64() * 1_000.0),
        None => format!(
            "recorded only {} of {} events in {:.1} s",
            ingest.recorded,
            ingest.events,
            ingest.recorded_after.as_secs_f64()
        ),
    };
    format!(
        "saga {:.0} events/s, ingest {:.0} events/s ({:.2}), {recorded}",
        run.events_per_second(),
        ingest.events_per_second(),
        ingest.events_per_second() / run.events_per_second()
    )
}

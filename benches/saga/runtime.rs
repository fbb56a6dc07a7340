//! The saga through choreo's full runtime: decode, inbox, handler, journal, encode, publish,
//! ack, on any transport.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use choreo::memory::MemoryTransport;
use choreo::{MemoryStore, RunningService, Store, Transport};
use tokio::sync::Notify;

use crate::events::{saga, services, Placed, Probe, EVENTS_PER_SAGA};
use crate::monitor::{Ingest, Watch};
use crate::report::Run;

/// The three services running on `transport`, the initiator first, each with the store
/// `store` names (`{service}` in it stands for the service's name), `instances` times over:
/// each instance opens its store, as a process of its own would; memory stores, which live
/// in one process, are shared by the instances of a service.
async fn start(
    transport: &Arc<dyn Transport>,
    topic: &str,
    probe: &Arc<Probe>,
    store: &str,
    instances: usize,
) -> Vec<RunningService> {
    let saga = saga(topic, Duration::from_secs(3_600));
    let mut memory: HashMap<&str, Arc<dyn Store>> = HashMap::new();
    let mut starting = Vec::new();
    for _ in 0..instances {
        let mut stores: HashMap<&str, Arc<dyn Store>> = HashMap::new();
        for name in ["alpha", "beta", "gamma"] {
            let url = store.replace("{service}", name);
            // A memory store of its own, gone with the run, rather than one `memory://` keeps.
            let opened = if url.starts_with("memory://") {
                Arc::clone(
                    memory
                        .entry(name)
                        .or_insert_with(|| Arc::new(MemoryStore::new())),
                )
            } else {
                choreo::open_store(&url)
                    .await
                    .unwrap_or_else(|error| panic!("cannot open the store {url}: {error}"))
            };
            stores.insert(name, opened);
        }
        let stores = |name: &str| Arc::clone(&stores[name]);
        starting.extend(
            services(&saga, probe, stores).map(|(_, service)| service.run(Arc::clone(transport))),
        );
    }
    futures_util::future::try_join_all(starting)
        .await
        .expect("the services join the transport")
}

/// How a run of [`play`] is set up.
pub(crate) struct Setup<'a> {
    /// The stores' URL; `{service}` stands for each service's name.
    pub(crate) store: &'a str,
    /// Instances of each service.
    pub(crate) instances: usize,
    /// Callers starting sagas at once, all through the first instance of the initiator.
    pub(crate) starters: usize,
}

/// Plays `sagas` sagas with at most `window` in flight, as `setup` says; with
/// `record_latency`, also the time of every hop (one saga at a time: a window of 1 admits
/// one start at a time whatever the callers).
pub(crate) async fn play(
    transport: Arc<dyn Transport>,
    topic: &str,
    setup: Setup<'_>,
    sagas: usize,
    window: usize,
    record_latency: bool,
) -> Run {
    let (run, _) = run(
        transport,
        topic,
        setup,
        sagas,
        window,
        record_latency,
        false,
    )
    .await;
    run
}

/// [`play`] with the saga console's monitor recording the topic beside the services, in the
/// same process, from before they start until it has recorded every event of the run.
pub(crate) async fn play_monitored(
    transport: Arc<dyn Transport>,
    topic: &str,
    setup: Setup<'_>,
    sagas: usize,
    window: usize,
) -> (Run, Ingest) {
    let (run, ingest) = run(transport, topic, setup, sagas, window, false, true).await;
    (run, ingest.unwrap_or_else(|| unreachable!("monitored")))
}

async fn run(
    transport: Arc<dyn Transport>,
    topic: &str,
    setup: Setup<'_>,
    sagas: usize,
    window: usize,
    record_latency: bool,
    monitored: bool,
) -> (Run, Option<Ingest>) {
    let Setup {
        store,
        instances,
        starters,
    } = setup;
    let watch = if monitored {
        Some(Watch::start(Arc::clone(&transport), topic).await)
    } else {
        None
    };
    let probe = Probe::new(window, record_latency, None);
    let mut running = start(&transport, topic, &probe, store, instances).await;
    let initiator = Arc::new(running.remove(0));
    let started = Instant::now();
    let start = {
        let (probe, initiator) = (Arc::clone(&probe), Arc::clone(&initiator));
        move |n| {
            let (initiator, payload) = (Arc::clone(&initiator), probe.payload(n));
            async move {
                initiator
                    .start_saga(Placed(payload))
                    .await
                    .expect("a saga starts");
            }
        }
    };
    crate::events::start_from(&probe, sagas, starters, start).await;
    probe.wait_for(sagas).await;
    let elapsed = started.elapsed();
    // The services keep running while the monitor catches up: the last saga's terminal
    // event is published after its handler reported the saga's end.
    let mut ingest = None;
    if let Some(watch) = watch {
        let events = sagas * EVENTS_PER_SAGA;
        // Every service describes itself when it starts, on the same topic.
        let descriptions = 3 * instances;
        let patience = Duration::from_secs(60).max(elapsed * 10);
        let ended = started + elapsed;
        let recorded = watch
            .wait_for(events, descriptions, started, ended, patience)
            .await;
        if recorded.lag.is_some() {
            let stored = watch.stored().await;
            assert_eq!(
                stored,
                events + descriptions,
                "the monitor's store holds every event of the run"
            );
        }
        watch.stop().await;
        ingest = Some(recorded);
    }
    drop(initiator);
    for service in running {
        service.kill();
    }
    (
        Run::new(sagas * EVENTS_PER_SAGA, elapsed, probe.latencies()),
        ingest,
    )
}

/// Bytes of resident memory per saga held open: `open` sagas wait on `beta`'s step, which
/// does not finish, with every initiator's deadline timer armed.
pub(crate) async fn memory_per_open_saga(open: usize) -> f64 {
    let gate = Arc::new(Notify::new());
    let probe = Probe::new(open + 1, false, Some(gate));
    let memory = MemoryTransport::new();
    let transport: Arc<dyn Transport> = Arc::new(memory.clone());
    let running = start(
        &transport,
        "bench.open",
        &probe,
        "memory://bench.open.{service}",
        1,
    )
    .await;
    // Warm up allocator pools and maps with a few sagas first.
    for n in 0..1_000 {
        running[0]
            .start_saga(Placed(probe.payload(n)))
            .await
            .expect("a saga starts");
    }
    settle().await;
    let before = resident_bytes();
    for n in 0..open {
        running[0]
            .start_saga(Placed(probe.payload(n as u64)))
            .await
            .expect("a saga starts");
    }
    settle().await;
    let after = resident_bytes();
    for service in running {
        service.kill();
    }
    memory.close();
    after.saturating_sub(before) as f64 / open as f64
}

/// Lets the services take what they can of the sagas started.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The process's resident set, from `/proc/self/statm` (0 where there is none).
pub(crate) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

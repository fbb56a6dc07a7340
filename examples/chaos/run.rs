//! The chaos run: starts the sagas, kills and restarts services at random instants while the
//! faults play, waits for every saga to end, and hands the result to the checker.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use choreo::memory::{Chaos, MemoryTransport};
use choreo::{RunningService, Saga, SagaLog, Transport};
use choreo_testkit::faults::{FaultCounts, FaultRates, Faults};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::checker::{self, Started, Verdicts};
use crate::services::{self, OrderPlaced, Plan, SERVICES};

/// What a run does.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Sagas in all.
    pub(crate) sagas: u64,
    /// The seed of every choice: plans, faults, kills.
    pub(crate) seed: u64,
    /// Sagas in flight at once.
    pub(crate) in_flight: usize,
    /// The deadline of a saga planned to complete.
    pub(crate) deadline: Duration,
    /// A service is killed every this long, on average; zero for never.
    pub(crate) kill_every: Duration,
    /// The faults and their rates.
    pub(crate) rates: FaultRates,
    /// How long a saga may take to end before it counts as lost.
    pub(crate) patience: Duration,
}

impl Settings {
    /// `sagas` sagas from `seed`, with the default faults.
    pub(crate) fn new(sagas: u64, seed: u64) -> Self {
        Self {
            sagas,
            seed,
            in_flight: 200,
            deadline: Duration::from_secs(10),
            kill_every: Duration::from_secs(1),
            rates: Faults::seeded(seed)
                .duplicate(0.02)
                .delay(0.02, Duration::from_millis(100))
                .drop_unacked(0.01)
                .lose_ack(0.01)
                .fail_publish(0.01)
                .fail_commit(0.01)
                .slow(0.01, Duration::from_millis(50))
                .rates()
                .clone(),
            patience: Duration::from_secs(120),
        }
    }
}

/// Something done to the broker while sagas run (a restart, a pause): called with its
/// number, from 1, after a share of the sagas started.
pub(crate) type Disruption =
    Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a run found.
#[derive(Debug)]
pub(crate) struct Report {
    /// The checker's classification.
    pub(crate) verdicts: Verdicts,
    /// The faults injected.
    pub(crate) faults: FaultCounts,
    /// Services killed.
    pub(crate) kills: u64,
    /// Times the broker or the stores were taken away for a while.
    pub(crate) outages: u64,
    /// Broker disruptions.
    pub(crate) disruptions: usize,
    /// From the first start to the last saga's end.
    pub(crate) elapsed: Duration,
}

/// What was done, the first faulty sagas found, and the checker's line, last.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "faults: {}; {} services killed; {} outages; {} broker disruptions; {:.1} s",
            self.faults,
            self.kills,
            self.outages,
            self.disruptions,
            self.elapsed.as_secs_f64()
        )?;
        for example in &self.verdicts.examples {
            writeln!(f, "  {example}")?;
        }
        write!(f, "{}", self.verdicts)
    }
}

/// The services' processes: each slot holds the running instance, if it is up.
struct Fleet {
    transport: Arc<dyn Transport>,
    saga: Saga,
    dir: PathBuf,
    faults: Arc<Faults>,
    running: Mutex<HashMap<&'static str, RunningService>>,
}

impl Fleet {
    /// Starts service `name` from its store, as a process would after a crash; tries again
    /// for a minute while the last instance still holds its store or the broker is away.
    async fn start(&self, name: &'static str) -> anyhow::Result<()> {
        let url = format!("sqlite://{}", services::database(&self.dir, name).display());
        let patience = Instant::now() + Duration::from_secs(60);
        loop {
            let running = match choreo::open_store(&url).await {
                Ok(store) => {
                    let store = self.faults.store(store);
                    let faults = Arc::clone(&self.faults);
                    let service = services::service(name, &self.saga, store, faults);
                    service
                        .run(Arc::clone(&self.transport))
                        .await
                        .map_err(anyhow::Error::from)
                }
                Err(error) => Err(error.into()),
            };
            match running {
                Ok(running) => {
                    self.running.lock().unwrap().insert(name, running);
                    return Ok(());
                }
                Err(error) if Instant::now() < patience => {
                    tracing::debug!(%error, name, "cannot start yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error).context(format!("cannot start {name}")),
            }
        }
    }

    /// Kills service `name`, as a crash would.
    fn kill(&self, name: &str) -> bool {
        let killed = self.running.lock().unwrap().remove(name);
        killed.map(RunningService::kill).is_some()
    }

    /// A transaction of the running orders service, or `None` while it is down.
    fn begin(&self) -> Option<choreo::SagaTransaction> {
        self.running
            .lock()
            .unwrap()
            .get("orders")
            .map(RunningService::begin)
    }

    async fn shutdown(&self) {
        let running: Vec<_> = self.running.lock().unwrap().drain().collect();
        for (_, service) in running {
            service.shutdown().await;
        }
    }
}

/// The in-memory broker of a run: with faults, it also ignores each saga's order (any pending
/// event of a saga may come next, not only its oldest).
pub(crate) fn memory_broker(settings: &Settings) -> Arc<dyn Transport> {
    let chaos = Chaos::seeded(settings.seed).reorder(!settings.rates.is_empty());
    Arc::new(MemoryTransport::with_chaos(chaos))
}

/// Runs `settings.sagas` sagas on `transport` with the services' SQLite files in `dir`
/// (which should be empty), then checks them.
pub(crate) async fn run(
    transport: Arc<dyn Transport>,
    dir: &Path,
    settings: &Settings,
    disruptions: &[Disruption],
) -> anyhow::Result<Report> {
    let faults = Faults::seeded(settings.seed)
        .with_rates(settings.rates.clone())
        .into_shared();
    let saga = services::saga(settings.deadline);
    for name in SERVICES {
        services::create_effects_table(&services::database(dir, name))?;
    }
    let log = Arc::new(SagaLog::start(Arc::clone(&transport), &saga, "chaos-checker").await?);
    let fleet = Arc::new(Fleet {
        transport: faults.transport(transport),
        saga: saga.clone(),
        dir: dir.to_owned(),
        faults: Arc::clone(&faults),
        running: Mutex::default(),
    });
    for name in SERVICES {
        fleet.start(name).await?;
    }

    let began = Instant::now();
    let stop_killing = CancellationToken::new();
    let killer = tokio::spawn(kill_and_restart(
        Arc::clone(&fleet),
        settings.kill_every,
        stop_killing.clone(),
    ));

    let in_flight = Arc::new(Semaphore::new(settings.in_flight));
    let mut last_start = Instant::now();
    let mut started = Vec::new();
    let mut endings = tokio::task::JoinSet::new();
    // One disruption after the other, each after its share of the sagas started.
    let (mut disrupted, mut disrupting) = (0, None);
    for order_id in 1..=settings.sagas {
        let share = (disrupted + 1) as u64 * settings.sagas / (disruptions.len() as u64 + 1);
        if disrupted < disruptions.len() && order_id > share {
            if let Some(previous) = disrupting.take() {
                previous.await?;
            }
            disrupted += 1;
            disrupting = Some(tokio::spawn((disruptions[disrupted - 1])(disrupted)));
        }
        let permit = Arc::clone(&in_flight).acquire_owned().await?;
        let plan = plan_of(settings.seed, order_id);
        let saga_id = start_saga(&fleet, order_id, plan, settings.deadline).await;
        last_start = Instant::now();
        started.push(Started {
            order_id,
            saga: saga_id,
            plan,
        });
        let log = Arc::clone(&log);
        let patience = settings.patience;
        endings.spawn(async move {
            let _ = log.wait_for_outcome(saga_id, &SERVICES, patience).await;
            drop(permit);
        });
    }
    if let Some(last) = disrupting {
        last.await?;
    }
    endings.join_all().await;
    let elapsed = began.elapsed();

    stop_killing.cancel();
    let (kills, outages) = killer.await??;
    // Every service started once more, as after a crash, so that each recovers what its
    // last instances left in its store (a start committed by an instance killed meanwhile
    // sits in the outbox until the next one starts); then, past every saga's deadline and
    // the others' grace, every deadline timer has fired, and the aborts they sent are
    // awaited. Only then are the services stopped, cleanly, so that what the checker reads
    // no longer changes.
    for name in SERVICES {
        fleet.kill(name);
        fleet.start(name).await?;
    }
    let grace = choreo::ServiceOptions::default().deadline_grace;
    tokio::time::sleep_until((last_start + settings.deadline + grace * 2).into()).await;
    let settling = tokio::time::Instant::now() + Duration::from_secs(30);
    for started in &started {
        let left = settling.saturating_duration_since(tokio::time::Instant::now());
        let _ = log.wait_for_outcome(started.saga, &SERVICES, left).await;
    }
    fleet.shutdown().await;

    let verdicts = checker::check(&started, dir, &log).await?;
    Ok(Report {
        verdicts,
        faults: faults.counts(),
        kills,
        outages,
        disruptions: disrupted,
        elapsed,
    })
}

/// Starts the saga of order `order_id` in one transaction with its `placed` effect,
/// through whichever orders instance runs; tries again until one commits.
async fn start_saga(
    fleet: &Fleet,
    order_id: u64,
    plan: Plan,
    deadline: Duration,
) -> choreo::SagaId {
    let timeout = if plan == Plan::TimedOut {
        services::SHORT_DEADLINE
    } else {
        deadline
    };
    loop {
        let Some(mut tx) = fleet.begin() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let attempt = async {
            services::place(&tx, order_id).await?;
            let saga = tx.start_saga_within(OrderPlaced { order_id, plan }, timeout)?;
            tx.commit().await?;
            anyhow::Ok(saga)
        };
        match attempt.await {
            Ok(saga) => return saga,
            Err(error) => {
                tracing::debug!(%error, order_id, "start failed; trying again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Kills a random service every `every` on average and starts it again a moment later,
/// and takes the broker or the stores away for up to a second about every other time,
/// until `stop`; returns how many services it killed and how many outages it caused.
async fn kill_and_restart(
    fleet: Arc<Fleet>,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<(u64, u64)> {
    let (mut kills, mut outages) = (0, 0);
    if every.is_zero() {
        return Ok((kills, outages));
    }
    let faults = &fleet.faults;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok((kills, outages)),
            () = tokio::time::sleep(faults.up_to(every * 2)) => {}
        }
        let outage = faults.up_to(Duration::from_secs(1));
        let which = faults.choose(4);
        if which == 0 {
            faults.transport_outage(outage);
        } else if which == 1 {
            faults.store_outage(outage);
        }
        outages += u64::from(which < 2);
        let name = SERVICES[faults.choose(SERVICES.len())];
        if fleet.kill(name) {
            kills += 1;
        }
        tokio::time::sleep(faults.up_to(Duration::from_millis(300))).await;
        fleet.start(name).await?;
    }
}

/// The plan of order `order_id`: fixed by the seed, whatever the interleaving.
fn plan_of(seed: u64, order_id: u64) -> Plan {
    let mut z = seed.wrapping_add(order_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Plan::ALL[((z ^ (z >> 31)) % Plan::ALL.len() as u64) as usize]
}

//! choreo against hand-written client code, side by side in one run: the same three-step
//! saga through the full runtime and through a raw baseline, on memory, Kafka and RabbitMQ
//! (on each broker also through the point-to-point chain a team writes by hand), plus the
//! hop latency, the memory an open saga holds and what tracing costs; and the saga
//! console's monitor recording the topic beside the services, and alone.
//!
//! ```text
//! cargo bench --all-features --bench saga                 # everything, about 2 minutes
//! cargo bench --all-features --bench saga -- --smoke      # tiny sizes, a few seconds
//! cargo bench --all-features --bench saga -- --help
//! ```
//! Brokers come from the test kit (containers, or `CHOREO_KAFKA_URL` / `CHOREO_AMQP_URL`).
//! See docs/benchmarks.md.

#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
mod broker;
mod events;
#[cfg(feature = "kafka")]
mod kafka;
mod monitor;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod raw;
mod report;
mod runtime;
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
mod topology;

use std::sync::Arc;
use std::time::Instant;

use choreo::memory::MemoryTransport;
use choreo::Transport;
use serde_json::json;

use crate::report::{median, Report, Row, Run};

struct Flags {
    sagas: usize,
    latency_sagas: usize,
    open_sagas: usize,
    broker_sagas: usize,
    store_sagas: usize,
    window: usize,
    runs: usize,
    only: Vec<String>,
    json: Option<String>,
    /// Callers starting sagas at once on the brokers, for choreo and the baselines alike.
    broker_starters: usize,
    /// Options added to the Kafka URL of every client, choreo's and the baselines'.
    kafka_options: String,
}

const USAGE: &str = "usage: saga [--smoke] [--sagas N] [--latency-sagas N] [--open-sagas N] \
[--broker-sagas N] [--broker-starters N] [--store-sagas N] [--window N] [--runs N] \
[--only memory,monitor,stores,kafka,rabbitmq,tracing] [--kafka-options 'rdkafka.linger.ms=0&...'] \
[--json FILE]";

impl Flags {
    fn parse() -> Self {
        let mut flags = Self {
            sagas: 20_000,
            latency_sagas: 2_000,
            open_sagas: 100_000,
            broker_sagas: 10_000,
            store_sagas: 10_000,
            window: 256,
            runs: 3,
            only: [
                "memory", "monitor", "stores", "kafka", "rabbitmq", "tracing",
            ]
            .map(String::from)
            .to_vec(),
            json: None,
            kafka_options: String::new(),
            broker_starters: BROKER_STARTERS,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> usize {
                args.next()
                    .and_then(|value| value.parse().ok())
                    .filter(|value| *value > 0)
                    .unwrap_or_else(|| fail(&format!("{name} needs a positive number")))
            };
            match arg.as_str() {
                "--smoke" => {
                    flags.sagas = 500;
                    flags.latency_sagas = 200;
                    flags.open_sagas = 2_000;
                    flags.broker_sagas = 100;
                    flags.store_sagas = 200;
                    flags.runs = 1;
                }
                "--sagas" => flags.sagas = number("--sagas"),
                "--latency-sagas" => flags.latency_sagas = number("--latency-sagas"),
                "--open-sagas" => flags.open_sagas = number("--open-sagas"),
                "--broker-sagas" => flags.broker_sagas = number("--broker-sagas"),
                "--store-sagas" => flags.store_sagas = number("--store-sagas"),
                "--broker-starters" => flags.broker_starters = number("--broker-starters"),
                "--window" => flags.window = number("--window"),
                "--runs" => flags.runs = number("--runs"),
                "--only" => {
                    let list = args.next().unwrap_or_else(|| fail("--only needs a list"));
                    flags.only = list.split(',').map(str::to_owned).collect();
                }
                "--kafka-options" => {
                    flags.kafka_options = args
                        .next()
                        .unwrap_or_else(|| fail("--kafka-options needs URL options"))
                }
                "--json" => {
                    flags.json = Some(args.next().unwrap_or_else(|| fail("--json needs a file")))
                }
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => fail(&format!("unexpected argument `{other}`")),
            }
        }
        flags
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|only| only == section)
    }

    fn settings(&self) -> serde_json::Value {
        json!({
            "sagas": self.sagas,
            "latency_sagas": self.latency_sagas,
            "open_sagas": self.open_sagas,
            "broker_sagas": self.broker_sagas,
            "broker_starters": self.broker_starters,
            "store_sagas": self.store_sagas,
            "window": self.window,
            "runs": self.runs,
            "kafka_options": self.kafka_options,
            "events_per_saga": events::EVENTS_PER_SAGA,
        })
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let flags = Flags::parse();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let began = Instant::now();
    let mut report = Report::default();
    runtime.block_on(async {
        if flags.wants("memory") || flags.wants("tracing") {
            memory(&flags, &mut report).await;
        }
        if flags.wants("monitor") {
            monitor_ceiling(&flags, &mut report).await;
        }
        if flags.wants("stores") {
            stores(&flags, &mut report).await;
        }
        if flags.wants("kafka") {
            kafka(&flags, &mut report).await;
        }
        if flags.wants("rabbitmq") {
            rabbitmq(&flags, &mut report).await;
        }
        if flags.wants("tracing") {
            tracing_overhead(&flags, &mut report).await;
        }
    });
    report
        .notes
        .push(format!("whole run: {:.1} s", began.elapsed().as_secs_f64()));

    print!("{}", report.table());
    let document = report.json(machine(cores), flags.settings());
    let text = serde_json::to_string_pretty(&document).expect("JSON");
    match &flags.json {
        Some(path) => {
            std::fs::write(path, format!("{text}\n"))
                .unwrap_or_else(|error| fail(&format!("cannot write {path}: {error}")));
            println!("JSON written to {path}");
        }
        None => println!("{text}"),
    }
}

fn machine(cores: usize) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    json!({ "cores": cores, "cpu": cpu, "os": std::env::consts::OS, "arch": std::env::consts::ARCH })
}

/// The memory transport: throughput against the channel baseline, hop latency, memory.
async fn memory(flags: &Flags, report: &mut Report) {
    let mut choreo_runs = Vec::new();
    let mut monitored_runs = Vec::new();
    let mut raw_runs = Vec::new();
    for run in 0..flags.runs {
        choreo_runs.push(memory_run(flags.sagas, flags.window, false, run).await);
        if flags.wants("monitor") {
            monitored_runs.push(memory_monitored_run(flags.sagas, flags.window, 700 + run).await);
        }
        raw_runs.push(raw::play(flags.sagas, flags.window, false).await);
    }
    let (choreo, raw) = (median(choreo_runs), median(raw_runs));
    let throughput = choreo.events_per_second();
    report.add(Row {
        key: "memory_events_per_second",
        what: "memory: saga events/s",
        unit: "events/s",
        choreo: throughput,
        raw: Some(raw.events_per_second()),
        target: Some((
            ">= 400000 and >= 0.5 of raw".to_owned(),
            throughput >= 400_000.0 && throughput >= 0.5 * raw.events_per_second(),
        )),
    });
    if !monitored_runs.is_empty() {
        monitor::report(
            report,
            &monitor::keys!("memory"),
            throughput,
            monitored_runs,
        );
    }

    let choreo = memory_run(flags.latency_sagas, 1, true, 0).await;
    let raw = raw::play(flags.latency_sagas, 1, true).await;
    report.add(Row {
        key: "memory_hop_p50_us",
        what: "memory: hop latency p50, one saga at a time",
        unit: "us",
        choreo: choreo.percentile_us(50.0),
        raw: Some(raw.percentile_us(50.0)),
        target: None,
    });
    let p99 = choreo.percentile_us(99.0);
    report.add(Row {
        key: "memory_hop_p99_us",
        what: "memory: hop latency p99, one saga at a time",
        unit: "us",
        choreo: p99,
        raw: Some(raw.percentile_us(99.0)),
        target: Some(("< 50".to_owned(), p99 < 50.0)),
    });

    let bytes = runtime::memory_per_open_saga(flags.open_sagas).await;
    report.add(Row {
        key: "memory_bytes_per_open_saga",
        what: "memory: resident bytes per open saga",
        unit: "bytes",
        choreo: bytes,
        raw: None,
        target: Some(("<= 1024".to_owned(), bytes <= 1_024.0)),
    });
}

async fn memory_run(sagas: usize, window: usize, record_latency: bool, run: usize) -> Run {
    let store = format!("memory://bench.memory.{run}.{{service}}");
    store_run(&store, 1, 1, sagas, window, record_latency, run).await
}

/// [`memory_run`] with the saga console's monitor beside the services.
async fn memory_monitored_run(sagas: usize, window: usize, run: usize) -> (Run, monitor::Ingest) {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let store = format!("memory://bench.memory.{run}.{{service}}");
    let setup = runtime::Setup {
        store: &store,
        instances: 1,
        starters: 1,
    };
    runtime::play_monitored(
        transport,
        &format!("bench.memory.{run}"),
        setup,
        sagas,
        window,
    )
    .await
}

/// The monitor alone, recording the events of `--sagas` sagas published before it starts:
/// its own ceiling, against the saga event rate of the memory section when it ran.
async fn monitor_ceiling(flags: &Flags, report: &mut Report) {
    let mut runs = Vec::new();
    for _ in 0..flags.runs {
        runs.push(monitor::ceiling(flags.sagas, flags.window).await);
    }
    runs.sort_by(|a, b| a.events_per_second().total_cmp(&b.events_per_second()));
    report.notes.push(format!(
        "monitor alone, events recorded/s run by run: {}",
        runs.iter()
            .map(|run| format!("{:.0}", run.events_per_second()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let middle = runs.len() / 2;
    let ceiling = runs.swap_remove(middle);
    report.add(Row {
        key: "monitor_ingest_ceiling_events_per_second",
        what: "monitor alone: events recorded/s, published before it started (vs memory saga events/s)",
        unit: "events/s",
        choreo: ceiling.events_per_second(),
        raw: report.figure("memory_events_per_second"),
        target: None,
    });
}

/// Callers starting sagas at once on the brokers (choreo and the baselines alike), as the
/// requests an initiating service serves do: each start waits for the broker's
/// acknowledgement, which one caller alone would serialise, capping every run at one saga
/// per publish round trip.
const BROKER_STARTERS: usize = 64;

/// Callers starting sagas at once in the store section, as the requests an initiating
/// service serves do: with a durable store each start waits for its commit, which one
/// caller alone would serialise. The pairs against a hand-written baseline start one at a
/// time, as their baselines do.
const STORE_STARTERS: usize = 16;

/// One run on the memory transport with the stores `store` names, `instances` of each
/// service, its sagas started by `starters` callers at once.
async fn store_run(
    store: &str,
    instances: usize,
    starters: usize,
    sagas: usize,
    window: usize,
    record_latency: bool,
    run: usize,
) -> Run {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let setup = runtime::Setup {
        store,
        instances,
        starters,
    };
    runtime::play(
        transport,
        &format!("bench.memory.{run}"),
        setup,
        sagas,
        window,
        record_latency,
    )
    .await
}

/// Pairs of runs of the store section: a memory store run and a SQLite one each.
const STORE_PAIRS: usize = 5;

/// The memory transport with each store, in one run: what keeping saga state costs.
///
/// This virtual machine's speed drifts by a fifth within a minute, so the SQLite store is
/// compared with a memory store run just before it, pair by pair, and the pair of the median
/// ratio is reported.
async fn stores(flags: &Flags, report: &mut Report) {
    let pairs = if flags.runs == 1 { 1 } else { STORE_PAIRS };
    let mut runs = Vec::new();
    let directory = std::env::temp_dir().join(format!("choreo-bench-{}", std::process::id()));
    for run in 0..pairs {
        let store = format!("memory://bench.stores.{run}.{{service}}");
        let memory = store_run(
            &store,
            1,
            STORE_STARTERS,
            flags.store_sagas,
            flags.window,
            false,
            300 + run,
        )
        .await;
        let store = format!("sqlite://{}/{run}/{{service}}.db", directory.display());
        let sqlite = store_run(
            &store,
            1,
            STORE_STARTERS,
            flags.store_sagas,
            flags.window,
            false,
            400 + run,
        )
        .await;
        runs.push((memory, sqlite));
    }
    let _ = std::fs::remove_dir_all(&directory);
    let ratio =
        |(memory, sqlite): &(Run, Run)| sqlite.events_per_second() / memory.events_per_second();
    runs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    report.notes.push(format!(
        "SQLite store / memory store, pair by pair: {}",
        runs.iter()
            .map(|pair| format!("{:.2}", ratio(pair)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let middle = runs.len() / 2;
    let (memory, sqlite) = runs.swap_remove(middle);
    let baseline = memory.events_per_second();
    report.add(Row {
        key: "stores_memory_events_per_second",
        what: "memory transport, memory store: saga events/s",
        unit: "events/s",
        choreo: baseline,
        raw: None,
        target: None,
    });
    let ratio = sqlite.events_per_second() / baseline;
    report.add(Row {
        key: "stores_sqlite_events_per_second",
        what: "memory transport, SQLite store (vs memory store)",
        unit: "events/s",
        choreo: sqlite.events_per_second(),
        raw: Some(baseline),
        target: Some((">= 0.5 of the memory store".to_owned(), ratio >= 0.5)),
    });
    postgres(flags, report, baseline).await;
}

/// Instances of each service in the PostgreSQL store's scale-out runs.
#[cfg(feature = "postgres")]
const SCALED_OUT: usize = 3;

/// The PostgreSQL store with one instance of each service, and with [`SCALED_OUT`] on one
/// database (docs/deployment.md), run by run in pairs as the SQLite store is.
#[cfg(feature = "postgres")]
async fn postgres(flags: &Flags, report: &mut Report, baseline: f64) {
    let server = choreo_testkit::PostgresServer::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut pairs = Vec::new();
    for run in 0..flags.runs {
        let mut pair = Vec::new();
        for (instances, number) in [(1, 500 + run), (SCALED_OUT, 600 + run)] {
            let database = server
                .database()
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            let played = store_run(
                &database,
                instances,
                STORE_STARTERS,
                flags.store_sagas,
                flags.window,
                false,
                number,
            )
            .await;
            pair.push(played);
        }
        let scaled = pair.pop().unwrap_or_else(|| unreachable!("two runs"));
        let single = pair.pop().unwrap_or_else(|| unreachable!("two runs"));
        pairs.push((single, scaled));
    }
    let ratio =
        |(single, scaled): &(Run, Run)| scaled.events_per_second() / single.events_per_second();
    pairs.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    report.notes.push(format!(
        "PostgreSQL store, {SCALED_OUT} instances per service / 1, pair by pair: {}",
        pairs
            .iter()
            .map(|pair| format!("{:.2}", ratio(pair)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let middle = pairs.len() / 2;
    let (single, scaled) = pairs.swap_remove(middle);
    report.add(Row {
        key: "stores_postgres_events_per_second",
        what: "memory transport, PostgreSQL store (vs memory store)",
        unit: "events/s",
        choreo: single.events_per_second(),
        raw: Some(baseline),
        target: None,
    });
    report.add(Row {
        key: "stores_postgres_3_instances_events_per_second",
        what: "memory transport, PostgreSQL store, 3 instances per service (vs 1)",
        unit: "events/s",
        choreo: scaled.events_per_second(),
        raw: Some(single.events_per_second()),
        target: None,
    });
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_flags: &Flags, report: &mut Report, _baseline: f64) {
    report.notes.push(
        "postgres store skipped: build with --features postgres,testkit (or --all-features)"
            .to_owned(),
    );
}

#[cfg(feature = "kafka")]
async fn kafka(flags: &Flags, report: &mut Report) {
    let compared = kafka::compare(
        flags.broker_sagas,
        flags.window,
        flags.broker_starters,
        flags.wants("monitor"),
        &flags.kafka_options,
    )
    .await;
    broker::report(
        report,
        &broker::keys!("kafka", "kafka (tansu)"),
        &monitor::keys!("kafka"),
        compared,
    );
}

#[cfg(not(feature = "kafka"))]
async fn kafka(_flags: &Flags, report: &mut Report) {
    report
        .notes
        .push("kafka skipped: build with --features kafka,testkit (or --all-features)".to_owned());
}

#[cfg(feature = "rabbitmq")]
async fn rabbitmq(flags: &Flags, report: &mut Report) {
    let compared = rabbitmq::compare(
        flags.broker_sagas,
        flags.window,
        flags.broker_starters,
        flags.wants("monitor"),
    )
    .await;
    broker::report(
        report,
        &broker::keys!("rabbitmq", "rabbitmq"),
        &monitor::keys!("rabbitmq"),
        compared,
    );
}

#[cfg(not(feature = "rabbitmq"))]
async fn rabbitmq(_flags: &Flags, report: &mut Report) {
    report.notes.push(
        "rabbitmq skipped: build with --features rabbitmq,testkit (or --all-features)".to_owned(),
    );
}

/// In-memory throughput with every span exported in batches to an exporter that drops
/// them, against the same run with no subscriber at all. Installs the global subscriber,
/// so it runs last.
async fn tracing_overhead(flags: &Flags, report: &mut Report) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    let mut off = Vec::new();
    for run in 0..flags.runs {
        off.push(memory_run(flags.sagas, flags.window, false, 100 + run).await);
    }
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bench"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    tracing::subscriber::set_global_default(subscriber).expect("no subscriber yet");
    let mut on = Vec::new();
    for run in 0..flags.runs {
        on.push(memory_run(flags.sagas, flags.window, false, 200 + run).await);
    }
    let _ = provider.shutdown();
    let (on, off) = (median(on), median(off));
    let ratio = on.events_per_second() / off.events_per_second();
    report.add(Row {
        key: "tracing_events_per_second",
        what: "memory: saga events/s, spans on vs off",
        unit: "events/s",
        choreo: on.events_per_second(),
        raw: Some(off.events_per_second()),
        target: Some(("cost <= 20% (ratio >= 0.8)".to_owned(), ratio >= 0.8)),
    });
}

/// A span exporter that drops everything: what tracing costs without the network.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

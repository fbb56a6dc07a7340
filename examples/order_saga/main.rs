//! An order saga over three services: orders, payments and inventory.
//!
//! ```text
//! orders: OrderPlaced -> payments: CreditReserved -> inventory: StockReserved
//!                                                 -> orders: OrderConfirmed (terminal)
//! ```
//!
//! One run plays three sagas and prints each one's timeline: one completes, one is rejected
//! (out of stock) and compensated, one times out (a slow supplier check) and is compensated.
//!
//! ```text
//! cargo run --example order_saga                                # every service, one process
//! CHOREO_URL=kafka://localhost:9092 cargo run --example order_saga -- --service payments
//! CHOREO_URL=kafka://localhost:9092 cargo run --example order_saga -- --service inventory
//! CHOREO_URL=kafka://localhost:9092 cargo run --example order_saga -- --service orders --play
//! ```
//! The transport comes from `CHOREO_URL` (default `memory://`) and each service's store
//! from `CHOREO_STORE` (default `memory://`), where `{service}` stands for the service's
//! name: `CHOREO_STORE=sqlite://data/{service}.db` gives each service a SQLite file that
//! keeps its sagas and its business state (statuses, credit, stock) across restarts;
//! `CHOREO_STORE=postgres://...` puts every service in one database, where several processes
//! of each service may run side by side (start `--service payments` twice, and so on). The
//! code does not change. With `OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318` each saga
//! is one trace in any OTLP backend (Jaeger, Grafana Tempo, ...), across processes; see
//! docs/observability.md.

mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use choreo::{
    AbortReason, Context, Event, RunningService, Saga, SagaLog, SagaOutcome, Service, Step,
    StepResult, Store, Transport,
};
use serde::{Deserialize, Serialize};

use crate::state::State;

const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];

/// How long a process waits at start for its broker and store to come up.
const STARTUP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderPlaced.v1")]
struct OrderPlaced {
    order_id: u64,
    sku: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payments.CreditReserved.v1")]
struct CreditReserved {
    order_id: u64,
    sku: String,
    amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.StockReserved.v1")]
struct StockReserved {
    order_id: u64,
    sku: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderConfirmed.v1")]
struct OrderConfirmed {
    order_id: u64,
}

/// What every service agrees on: the topic, the deadline and the terminal event.
fn order_saga() -> Saga {
    Saga::new("orders.saga")
        .timeout(Duration::from_secs(2))
        .completes_on::<OrderConfirmed>()
}

// ----- orders -------------------------------------------------------------------------------

fn orders_service(state: State, store: Arc<dyn Store>) -> Service {
    let confirming = state.clone();
    Service::builder("orders", &order_saga())
        .store(store)
        .initiates::<OrderPlaced>()
        .compensate(move |order: OrderPlaced, cx: Context| {
            let state = state.clone();
            async move { state.set_status(&cx, order.order_id, "cancelled").await }
        })
        .step(move |stock: StockReserved, cx: Context| {
            let state = confirming.clone();
            async move {
                state.set_status(&cx, stock.order_id, "confirmed").await?;
                Ok(Step::done(OrderConfirmed {
                    order_id: stock.order_id,
                }))
            }
        })
        .build()
        .expect("the orders service is well defined")
}

// ----- payments -----------------------------------------------------------------------------

fn payments_service(state: State, store: Arc<dyn Store>) -> Service {
    let releasing = state.clone();
    Service::builder("payments", &order_saga())
        .store(store)
        .step(move |order: OrderPlaced, cx: Context| {
            let state = state.clone();
            async move {
                if !state.reserve_credit(&cx, order.amount_cents).await? {
                    return Ok(Step::reject("insufficient credit"));
                }
                Ok(Step::done(CreditReserved {
                    order_id: order.order_id,
                    sku: order.sku,
                    amount_cents: order.amount_cents,
                }))
            }
        })
        .compensate(move |credit: CreditReserved, cx: Context| {
            let state = releasing.clone();
            async move { state.release_credit(&cx, credit.amount_cents).await }
        })
        .build()
        .expect("the payments service is well defined")
}

// ----- inventory ----------------------------------------------------------------------------

/// Items whose supplier check is slow: longer than the saga's deadline.
const SLOW_SUPPLIER: &str = "espresso-machine";

async fn reserve_stock(
    state: State,
    credit: CreditReserved,
    cx: Context,
) -> StepResult<StockReserved> {
    if credit.sku == SLOW_SUPPLIER {
        tracing::info!(remaining = ?cx.remaining(), "asking the supplier");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if !state.reserve_stock(&cx, &credit.sku).await? {
        return Ok(Step::reject(format!("{} is out of stock", credit.sku)));
    }
    Ok(Step::done(StockReserved {
        order_id: credit.order_id,
        sku: credit.sku,
    }))
}

fn inventory_service(state: State, store: Arc<dyn Store>) -> Service {
    let releasing = state.clone();
    Service::builder("inventory", &order_saga())
        .store(store)
        .step(move |credit: CreditReserved, cx: Context| reserve_stock(state.clone(), credit, cx))
        .compensate(move |stock: StockReserved, cx: Context| {
            let state = releasing.clone();
            async move { state.release_stock(&cx, &stock.sku).await }
        })
        .build()
        .expect("the inventory service is well defined")
}

// ----- the run ------------------------------------------------------------------------------

/// Service `name`, with its store and its business state from `CHOREO_STORE`.
async fn service(name: &str, memory: &Arc<state::Memory>) -> anyhow::Result<(Service, State)> {
    if !SERVICES.contains(&name) {
        bail!("unknown service `{name}`; expected one of {SERVICES:?}");
    }
    let template = std::env::var("CHOREO_STORE").unwrap_or_else(|_| "memory://".to_owned());
    let url = template.replace("{service}", name);
    // The business tables first, then the store, which adds its own to the same database.
    let state = State::open(&url, memory).await?;
    let store = choreo::open_store_within(&url, STARTUP).await?;
    let service = match name {
        "orders" => orders_service(state.clone(), store),
        "payments" => payments_service(state.clone(), store),
        "inventory" => inventory_service(state.clone(), store),
        _ => unreachable!("checked above"),
    };
    Ok((service, state))
}

/// Starts the three sagas from `orders`, each in one transaction with its order's
/// "pending" status, and prints how each went; with every service in this process
/// (`states`), also what their business state says.
async fn play(
    orders: &RunningService,
    orders_state: &State,
    transport: Arc<dyn Transport>,
    states: Option<&HashMap<&str, State>>,
) -> anyhow::Result<()> {
    let log = SagaLog::start(transport, &order_saga(), "order-saga-log").await?;
    let plays = [
        ("book", 4_000, "complete", None),
        (
            "vinyl",
            2_500,
            "be rejected (out of stock) and compensated",
            Some(AbortReason::Rejected),
        ),
        (
            SLOW_SUPPLIER,
            3_000,
            "time out (slow supplier) and be compensated",
            Some(AbortReason::TimedOut),
        ),
    ];
    let mut sagas = Vec::new();
    for (index, (sku, amount_cents, expectation, expected)) in plays.into_iter().enumerate() {
        let order_id = index as u64 + 1;
        let mut tx = orders.begin();
        orders_state.order_placed(&tx, order_id).await?;
        let saga = tx.start_saga(OrderPlaced {
            order_id,
            sku: sku.to_owned(),
            amount_cents,
        })?;
        tx.commit().await?;
        sagas.push((order_id, saga, expectation, expected));
    }

    let mut surprises = Vec::new();
    for (order_id, saga, expectation, expected) in sagas {
        let outcome = log
            .wait_for_outcome(saga, &SERVICES, Duration::from_secs(30))
            .await
            .context("are all three services running?")?;
        let aborted = match &outcome {
            SagaOutcome::Completed => None,
            SagaOutcome::Compensated { reason, .. } => Some(*reason),
        };
        if aborted != expected {
            surprises.push(format!("order {order_id}: expected it to {expectation}"));
        }
        let verdict = match outcome {
            SagaOutcome::Completed => "COMPLETED".to_owned(),
            SagaOutcome::Compensated { reason, failed } if failed.is_empty() => {
                format!("COMPENSATED ({reason})")
            }
            SagaOutcome::Compensated { reason, failed } => {
                format!("COMPENSATED ({reason}), dead-lettered compensations: {failed:?}")
            }
        };
        println!("order {order_id} (should {expectation}): {verdict}\n  saga {saga}");
        print!("{}", log.timeline(saga));
        if states.is_some() {
            let statuses = orders_state.summary().await?.statuses;
            let status = statuses.get(&order_id).map_or("unknown", String::as_str);
            println!("  order status: {status}");
        }
        println!();
    }
    if let Some(states) = states {
        let credit = states["payments"].summary().await?.credit_cents;
        let stock = states["inventory"].summary().await?.stock;
        println!("credit available: {credit} cents; stock: {stock:?}");
    }
    if !surprises.is_empty() {
        let mut message = format!("unexpected outcomes: {}", surprises.join("; "));
        if std::env::var("CHOREO_STORE").is_ok_and(|store| !store.starts_with("memory")) {
            message.push_str(
                " (a durable store keeps the credit and stock of earlier plays: remove its files or tables to play from the start)",
            );
        }
        bail!(message);
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Args {
    service: Option<String>,
    play: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args::default();
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--service" => args.service = Some(iter.next().context("--service needs a name")?),
            "--play" => args.play = true,
            "-h" | "--help" => {
                println!("usage: order_saga [--service orders|payments|inventory] [--play]");
                std::process::exit(0);
            }
            other => bail!("unexpected argument `{other}`; try --help"),
        }
    }
    if args.play && args.service.as_deref().is_some_and(|s| s != "orders") {
        bail!(
            "--play starts sagas, which is the orders service's job: use --service orders --play"
        );
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // Logs to stderr (`RUST_LOG`, default: errors only); traces and metrics to the OTLP
    // endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT`, if set. Dropped last: flushes them.
    let telemetry = choreo::telemetry::Setup::new(args.service.as_deref().unwrap_or("order-saga"))
        .default_log_filter("error")
        .init()?;
    run(args).await?;
    telemetry.shutdown();
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let url = std::env::var("CHOREO_URL").unwrap_or_else(|_| "memory://".to_owned());
    let transport = choreo::connect_within(&url, STARTUP).await?;
    let memory = Arc::default();

    let Some(name) = args.service else {
        println!(
            "choreo order saga on {}\n",
            choreo::TransportUrl::parse(&url)?
        );
        let (mut running, mut states) = (HashMap::new(), HashMap::new());
        for name in SERVICES {
            let (service, state) = service(name, &memory).await?;
            running.insert(name, service.run(Arc::clone(&transport)).await?);
            states.insert(name, state);
        }
        play(
            &running["orders"],
            &states["orders"],
            transport,
            Some(&states),
        )
        .await?;
        for (_, service) in running {
            service.shutdown().await;
        }
        return Ok(());
    };

    if transport.name() == "memory" {
        eprintln!("note: memory:// reaches only this process; set CHOREO_URL to a broker to run services apart");
    }
    let (service, state) = service(&name, &memory).await?;
    let service = service.run(Arc::clone(&transport)).await?;
    if args.play {
        play(&service, &state, transport, None).await?;
    } else {
        eprintln!(
            "{name} is running on {}; Ctrl-C stops it",
            choreo::TransportUrl::parse(&url)?
        );
        tokio::signal::ctrl_c().await?;
    }
    service.shutdown().await;
    Ok(())
}

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
//! The transport comes from `CHOREO_URL` (default `memory://`); the code does not change.
//! With `OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318` each saga is one trace in any
//! OTLP backend (Jaeger, Grafana Tempo, ...), across processes; see docs/observability.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use choreo::{
    AbortReason, Context, Event, HandlerError, RunningService, Saga, SagaLog, SagaOutcome, Service,
    Step, StepResult, Transport,
};
use serde::{Deserialize, Serialize};

const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
    sku: String,
    amount_cents: u64,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.OrderPlaced.v1";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CreditReserved {
    order_id: u64,
    sku: String,
    amount_cents: u64,
}
impl Event for CreditReserved {
    const TYPE: &'static str = "payments.CreditReserved.v1";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StockReserved {
    order_id: u64,
    sku: String,
}
impl Event for StockReserved {
    const TYPE: &'static str = "inventory.StockReserved.v1";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderConfirmed {
    order_id: u64,
}
impl Event for OrderConfirmed {
    const TYPE: &'static str = "orders.OrderConfirmed.v1";
}

/// What every service agrees on: the topic, the deadline and the terminal event.
fn order_saga() -> Saga {
    Saga::new("orders.saga")
        .timeout(Duration::from_secs(2))
        .completes_on::<OrderConfirmed>()
}

// ----- orders -------------------------------------------------------------------------------

#[derive(Default)]
struct Orders {
    status: Mutex<HashMap<u64, &'static str>>,
}

impl Orders {
    fn set(&self, order_id: u64, status: &'static str) {
        self.status.lock().unwrap().insert(order_id, status);
    }
}

fn orders_service(orders: Arc<Orders>) -> anyhow::Result<Service> {
    let confirming = Arc::clone(&orders);
    Ok(Service::builder("orders", &order_saga())
        .initiates::<OrderPlaced>()
        .compensate(move |order: OrderPlaced, _cx: Context| {
            let orders = Arc::clone(&orders);
            async move {
                orders.set(order.order_id, "cancelled");
                Ok::<_, HandlerError>(())
            }
        })
        .step(move |stock: StockReserved, _cx: Context| {
            let orders = Arc::clone(&confirming);
            async move {
                orders.set(stock.order_id, "confirmed");
                Ok(Step::done(OrderConfirmed {
                    order_id: stock.order_id,
                }))
            }
        })
        .build()?)
}

// ----- payments -----------------------------------------------------------------------------

struct Payments {
    available_cents: Mutex<u64>,
}

fn payments_service(payments: Arc<Payments>) -> anyhow::Result<Service> {
    let releasing = Arc::clone(&payments);
    Ok(Service::builder("payments", &order_saga())
        .step(move |order: OrderPlaced, _cx: Context| {
            let payments = Arc::clone(&payments);
            async move {
                let mut available = payments.available_cents.lock().unwrap();
                if order.amount_cents > *available {
                    return Ok(Step::reject("insufficient credit"));
                }
                *available -= order.amount_cents;
                Ok(Step::done(CreditReserved {
                    order_id: order.order_id,
                    sku: order.sku,
                    amount_cents: order.amount_cents,
                }))
            }
        })
        .compensate(move |credit: CreditReserved, _cx: Context| {
            let payments = Arc::clone(&releasing);
            async move {
                *payments.available_cents.lock().unwrap() += credit.amount_cents;
                Ok(())
            }
        })
        .build()?)
}

// ----- inventory ----------------------------------------------------------------------------

struct Inventory {
    stock: Mutex<HashMap<String, u32>>,
}

/// Items whose supplier check is slow: longer than the saga's deadline.
const SLOW_SUPPLIER: &str = "espresso-machine";

async fn reserve_stock(
    inventory: Arc<Inventory>,
    credit: CreditReserved,
    cx: Context,
) -> StepResult<StockReserved> {
    if credit.sku == SLOW_SUPPLIER {
        tracing::info!(remaining = ?cx.remaining(), "asking the supplier");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut stock = inventory.stock.lock().unwrap();
    let left = stock.entry(credit.sku.clone()).or_default();
    if *left == 0 {
        return Ok(Step::reject(format!("{} is out of stock", credit.sku)));
    }
    *left -= 1;
    Ok(Step::done(StockReserved {
        order_id: credit.order_id,
        sku: credit.sku,
    }))
}

fn inventory_service(inventory: Arc<Inventory>) -> anyhow::Result<Service> {
    let releasing = Arc::clone(&inventory);
    Ok(Service::builder("inventory", &order_saga())
        .step(move |credit: CreditReserved, cx: Context| {
            reserve_stock(Arc::clone(&inventory), credit, cx)
        })
        .compensate(move |stock: StockReserved, _cx: Context| {
            let inventory = Arc::clone(&releasing);
            async move {
                *inventory
                    .stock
                    .lock()
                    .unwrap()
                    .entry(stock.sku)
                    .or_default() += 1;
                Ok(())
            }
        })
        .build()?)
}

// ----- the run ------------------------------------------------------------------------------

struct World {
    orders: Arc<Orders>,
    payments: Arc<Payments>,
    inventory: Arc<Inventory>,
}

impl World {
    fn new() -> Self {
        Self {
            orders: Arc::default(),
            payments: Arc::new(Payments {
                available_cents: Mutex::new(10_000),
            }),
            inventory: Arc::new(Inventory {
                stock: Mutex::new(HashMap::from([
                    ("book".to_owned(), 3),
                    ("vinyl".to_owned(), 0),
                    (SLOW_SUPPLIER.to_owned(), 1),
                ])),
            }),
        }
    }

    fn service(&self, name: &str) -> anyhow::Result<Service> {
        match name {
            "orders" => orders_service(Arc::clone(&self.orders)),
            "payments" => payments_service(Arc::clone(&self.payments)),
            "inventory" => inventory_service(Arc::clone(&self.inventory)),
            other => bail!("unknown service `{other}`; expected one of {SERVICES:?}"),
        }
    }
}

/// Starts the three sagas from `orders` and prints how each went.
async fn play(
    orders: &RunningService,
    transport: Arc<dyn Transport>,
    world: Option<&World>,
) -> anyhow::Result<()> {
    let log = SagaLog::start(transport, &order_saga(), "order-saga-timeline").await?;
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
        if let Some(world) = world {
            world.orders.set(order_id, "pending");
        }
        let saga = orders
            .start_saga(OrderPlaced {
                order_id,
                sku: sku.to_owned(),
                amount_cents,
            })
            .await?;
        sagas.push((order_id, saga, expectation, expected));
    }

    let mut surprises = Vec::new();
    for (order_id, saga, expectation, expected) in sagas {
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            log.wait_for_outcome(saga, &SERVICES),
        )
        .await
        .with_context(|| {
            format!("saga {saga} did not end in 30 s; are all three services running?")
        })?;
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
        if let Some(world) = world {
            let status = world.orders.status.lock().unwrap().get(&order_id).copied();
            println!("  order status: {}", status.unwrap_or("unknown"));
        }
        println!();
    }
    if let Some(world) = world {
        println!(
            "credit available: {} cents; stock: {:?}",
            world.payments.available_cents.lock().unwrap(),
            sorted(&world.inventory.stock.lock().unwrap())
        );
    }
    if !surprises.is_empty() {
        bail!("unexpected outcomes: {}", surprises.join("; "));
    }
    Ok(())
}

fn sorted(stock: &HashMap<String, u32>) -> Vec<(String, u32)> {
    let mut stock: Vec<_> = stock.iter().map(|(sku, n)| (sku.clone(), *n)).collect();
    stock.sort();
    stock
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
    let transport = choreo::connect(&url).await?;
    let world = World::new();

    let Some(name) = args.service else {
        println!(
            "choreo order saga on {}\n",
            choreo::TransportUrl::parse(&url)?
        );
        let mut running = HashMap::new();
        for name in SERVICES {
            running.insert(
                name,
                world.service(name)?.run(Arc::clone(&transport)).await?,
            );
        }
        play(&running["orders"], transport, Some(&world)).await?;
        for (_, service) in running {
            service.shutdown().await;
        }
        return Ok(());
    };

    if transport.name() == "memory" {
        eprintln!("note: memory:// reaches only this process; set CHOREO_URL to a broker to run services apart");
    }
    let service = world.service(&name)?.run(Arc::clone(&transport)).await?;
    if args.play {
        play(&service, transport, None).await?;
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

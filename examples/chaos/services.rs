//! The order saga's three services, as the chaos run plays them: every business effect is a
//! row in the service's own SQLite file, written in the handling's transaction, so the
//! checker can count how often each was applied.
//!
//! ```text
//! orders: OrderPlaced -> payments: CreditReserved -> inventory: StockReserved
//!                                                 -> orders: OrderConfirmed (terminal)
//! ```
//!
//! Each order carries a [`Plan`] that says how its saga should go, so that one run mixes
//! every outcome: completed, rejected at each step, timed out, and compensated through a
//! compensation that fails a few times first.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use choreo::sqlite::rusqlite::Connection;
use choreo::sqlite::SqliteExt;
use choreo::{Context, Event, HandlerError, Saga, SagaTransaction, Service, Step, Store};
use choreo_testkit::faults::Faults;
use serde::{Deserialize, Serialize};

pub(crate) const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];

/// How an order's saga is meant to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Plan {
    /// Every step succeeds.
    Complete,
    /// Payments rejects: no credit.
    RejectedByPayments,
    /// Inventory rejects: no stock.
    RejectedByInventory,
    /// Orders rejects the confirmation: the customer withdrew.
    RejectedByOrders,
    /// Inventory's check outlasts the saga's deadline.
    TimedOut,
    /// Inventory rejects, and payments' compensation fails twice before it succeeds.
    FlakyCompensation,
}

impl Plan {
    pub(crate) const ALL: [Plan; 6] = [
        Plan::Complete,
        Plan::RejectedByPayments,
        Plan::RejectedByInventory,
        Plan::RejectedByOrders,
        Plan::TimedOut,
        Plan::FlakyCompensation,
    ];

    /// Whether the saga can complete; faults may still time it out.
    pub(crate) fn can_complete(self) -> bool {
        self == Plan::Complete
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderPlaced.v1")]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
    pub(crate) plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "payments.CreditReserved.v1")]
pub(crate) struct CreditReserved {
    pub(crate) order_id: u64,
    pub(crate) plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "inventory.StockReserved.v1")]
pub(crate) struct StockReserved {
    pub(crate) order_id: u64,
    pub(crate) plan: Plan,
}

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderConfirmed.v1")]
pub(crate) struct OrderConfirmed {
    pub(crate) order_id: u64,
}

/// The saga every service agrees on. Its default deadline is generous: a saga planned to
/// complete should, unless faults hold it up for that long.
pub(crate) fn saga(timeout: Duration) -> Saga {
    Saga::new("chaos.orders")
        .timeout(timeout)
        .completes_on::<OrderConfirmed>()
}

/// How long a timed-out plan's saga has, and how long inventory's check takes for it.
pub(crate) const SHORT_DEADLINE: Duration = Duration::from_millis(300);
const SLOW_CHECK: Duration = Duration::from_millis(600);

/// How many times payments' compensation fails, per saga and process, in a flaky plan.
const COMPENSATION_FAILURES: u32 = 2;

/// A service's SQLite file: `dir/name.db`.
pub(crate) fn database(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.db"))
}

/// The table of business effects, made before the store opens the file.
pub(crate) fn create_effects_table(path: &Path) -> anyhow::Result<()> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS effects (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             order_id INTEGER NOT NULL,
             effect TEXT NOT NULL)",
    )?;
    Ok(())
}

/// One effect row: applied in the transaction of the handling that calls it.
async fn apply(cx: &Context, order_id: u64, effect: &'static str) -> Result<(), HandlerError> {
    cx.sqlite(move |db| {
        db.execute(
            "INSERT INTO effects (order_id, effect) VALUES (?1, ?2)",
            (order_id as i64, effect),
        )
    })
    .await?;
    Ok(())
}

/// Places order `order_id` in `tx`, the transaction that starts its saga.
pub(crate) async fn place(tx: &SagaTransaction, order_id: u64) -> anyhow::Result<()> {
    tx.sqlite(move |db| {
        db.execute(
            "INSERT INTO effects (order_id, effect) VALUES (?1, 'placed')",
            [order_id as i64],
        )
    })
    .await?;
    Ok(())
}

/// Service `name` on `store`; its handlers are slowed as `faults` says.
pub(crate) fn service(
    name: &str,
    saga: &Saga,
    store: Arc<dyn Store>,
    faults: Arc<Faults>,
) -> Service {
    let builder = Service::builder(name, saga).store(store);
    let built = match name {
        "orders" => {
            let confirming = Arc::clone(&faults);
            builder
                .initiates::<OrderPlaced>()
                .compensate(|order: OrderPlaced, cx: Context| async move {
                    apply(&cx, order.order_id, "cancelled").await
                })
                .step(move |stock: StockReserved, cx: Context| {
                    let faults = Arc::clone(&confirming);
                    async move {
                        faults.slow_handler().await;
                        if stock.plan == Plan::RejectedByOrders {
                            return Ok(Step::reject("the customer withdrew"));
                        }
                        apply(&cx, stock.order_id, "confirmed").await?;
                        Ok(Step::done(OrderConfirmed {
                            order_id: stock.order_id,
                        }))
                    }
                })
        }
        "payments" => {
            let failures = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
            builder
                .step(move |order: OrderPlaced, cx: Context| {
                    let faults = Arc::clone(&faults);
                    async move {
                        faults.slow_handler().await;
                        if order.plan == Plan::RejectedByPayments {
                            return Ok(Step::reject("insufficient credit"));
                        }
                        apply(&cx, order.order_id, "reserved").await?;
                        Ok(Step::done(CreditReserved {
                            order_id: order.order_id,
                            plan: order.plan,
                        }))
                    }
                })
                .compensate(move |credit: CreditReserved, cx: Context| {
                    let failures = Arc::clone(&failures);
                    async move {
                        if credit.plan == Plan::FlakyCompensation {
                            let mut failures = failures.lock().unwrap();
                            let failed: &mut u32 = failures.entry(credit.order_id).or_default();
                            if *failed < COMPENSATION_FAILURES {
                                *failed += 1;
                                return Err(HandlerError::transient("the bank is busy"));
                            }
                        }
                        apply(&cx, credit.order_id, "released").await
                    }
                })
        }
        "inventory" => builder
            .step(move |credit: CreditReserved, cx: Context| {
                let faults = Arc::clone(&faults);
                async move {
                    faults.slow_handler().await;
                    match credit.plan {
                        Plan::RejectedByInventory | Plan::FlakyCompensation => {
                            return Ok(Step::reject("out of stock"));
                        }
                        Plan::TimedOut => tokio::time::sleep(SLOW_CHECK).await,
                        _ => {}
                    }
                    apply(&cx, credit.order_id, "reserved").await?;
                    Ok(Step::done(StockReserved {
                        order_id: credit.order_id,
                        plan: credit.plan,
                    }))
                }
            })
            .compensate(|stock: StockReserved, cx: Context| async move {
                apply(&cx, stock.order_id, "released").await
            }),
        other => unreachable!("no service `{other}`"),
    };
    built.build().expect("the chaos services are well defined")
}

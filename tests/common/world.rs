//! The business side of the order saga's services: how they behave, and a ledger of every
//! effect they had. On a SQL store the ledger is a table in each service's database,
//! written in the handling's transaction, so that a test asserts the business rows.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use choreo::{Context, HandlerError, SagaTransaction};
use tokio::sync::Notify;

/// How the services behave; tests change it before starting sagas.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub credit_limit_cents: u64,
    pub out_of_stock: HashSet<String>,
    /// SKUs inventory backorders: its step's second outcome.
    pub backordered: HashSet<String>,
    /// How long inventory takes to reserve a SKU.
    pub slow_skus: HashMap<String, Duration>,
    /// How long payments takes to reserve credit.
    pub credit_delay: Duration,
    /// How often inventory fails transiently before it succeeds.
    pub inventory_transient_failures: u32,
    /// Whether inventory fails permanently.
    pub inventory_permanent_failure: bool,
    /// Whether inventory panics.
    pub inventory_panics: bool,
    /// How often releasing credit fails transiently before it succeeds.
    pub refund_failures: u32,
    /// Orders refuses to confirm (the customer cancelled meanwhile).
    pub reject_confirmation: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            credit_limit_cents: 10_000,
            out_of_stock: HashSet::new(),
            backordered: HashSet::new(),
            slow_skus: HashMap::new(),
            credit_delay: Duration::ZERO,
            inventory_transient_failures: 0,
            inventory_permanent_failure: false,
            inventory_panics: false,
            refund_failures: 0,
            reject_confirmation: false,
        }
    }
}

/// One effect a service had on its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub service: &'static str,
    pub action: &'static str,
    pub order_id: u64,
}

pub fn effect(service: &'static str, action: &'static str, order_id: u64) -> Effect {
    Effect {
        service,
        action,
        order_id,
    }
}

const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];
const ACTIONS: [&str; 12] = [
    "create_order",
    "cancel_order",
    "confirm_order",
    "await_stock",
    "backorder_stock",
    "cancel_backorder",
    "reserve_credit",
    "release_credit",
    "capture_payment",
    "refund_payment",
    "reserve_stock",
    "release_stock",
];

fn known(names: &[&'static str], name: &str) -> &'static str {
    names
        .iter()
        .find(|known| **known == name)
        .unwrap_or_else(|| panic!("unknown ledger name `{name}`"))
}

/// Where the effects are kept.
pub enum Ledger {
    /// In process memory, next to a memory store: not transactional.
    Memory(Mutex<Vec<(u64, Effect)>>),
    /// A `ledger` table in each service's SQLite file, `{directory}/{service}.db`.
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    /// A `ledger` table in the services' PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres(choreo::postgres::sqlx::PgPool),
}

/// Where a handler stops on purpose, to be killed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Inventory's step was called and did nothing yet.
    BeforeStep,
    /// Inventory's step wrote its business row, uncommitted.
    AfterBusinessWrite,
    /// Inventory's handling committed; its event is not published yet.
    AfterCommit,
    /// Inventory's event is published; the event it handled is not acknowledged yet.
    AfterPublish,
}

/// Whether a handler reached a point where a test stops it, and a way to wait for that.
#[derive(Default)]
pub struct Reached {
    reached: AtomicBool,
    reached_now: Notify,
}

impl Reached {
    fn reset(&self) {
        self.reached.store(false, Ordering::SeqCst);
    }

    fn mark(&self) {
        self.reached.store(true, Ordering::SeqCst);
        self.reached_now.notify_waiters();
    }

    /// Once the point was reached.
    pub async fn wait(&self) {
        loop {
            let reached = self.reached_now.notified();
            if self.reached.load(Ordering::SeqCst) {
                return;
            }
            reached.await;
        }
    }
}

/// A crash point armed once for one order: the first handling of it to reach the point
/// stops there for good.
#[derive(Default)]
pub struct Stalls {
    armed: Mutex<Option<(CrashPoint, u64)>>,
    reached: Reached,
}

impl Stalls {
    pub fn arm(&self, point: CrashPoint, order_id: u64) {
        *self.armed.lock().unwrap() = Some((point, order_id));
        self.reached.reset();
    }

    /// Never returns if `point` is armed for `order_id`: disarms it and reports it reached.
    pub async fn at(&self, point: CrashPoint, order_id: Option<u64>) {
        let armed = {
            let mut armed = self.armed.lock().unwrap();
            let hit = order_id.is_some_and(|order| *armed == Some((point, order)));
            if hit {
                *armed = None;
            }
            hit
        };
        if armed {
            self.reached.mark();
            std::future::pending::<()>().await;
        }
    }

    pub async fn reached(&self) {
        self.reached.wait().await;
    }
}

/// A point where payments' capture of one order waits, its business row written and not
/// committed, until the test lets it go on.
#[derive(Default)]
pub struct Gate {
    held: Mutex<Option<u64>>,
    reached: Reached,
    opened: Notify,
}

impl Gate {
    /// Makes the next capture of `order_id` wait at the gate.
    pub fn hold(&self, order_id: u64) {
        *self.held.lock().unwrap() = Some(order_id);
        self.reached.reset();
    }

    /// Waits there if the gate holds `order_id`, until [`open`](Self::open).
    pub async fn at(&self, order_id: u64) {
        let held = self.held.lock().unwrap().take_if(|held| *held == order_id);
        if held.is_some() {
            let opened = self.opened.notified();
            self.reached.mark();
            opened.await;
        }
    }

    /// Once a capture waits at the gate.
    pub async fn reached(&self) {
        self.reached.wait().await;
    }

    /// Lets the capture waiting at the gate go on.
    pub fn open(&self) {
        self.opened.notify_one();
    }
}

/// The business side of the three services: their behaviour and a ledger of effects.
pub struct World {
    pub behaviour: Mutex<Behaviour>,
    pub stalls: Stalls,
    pub gate: Gate,
    ledger: Ledger,
    sequence: AtomicU64,
    attempts: Mutex<HashMap<(&'static str, u64), u32>>,
    /// The saga data each action's handler read from its context, by action and order.
    saga_data: Mutex<HashMap<(&'static str, u64), choreo::SagaData>>,
}

impl World {
    pub fn new(ledger: Ledger) -> Self {
        Self {
            behaviour: Mutex::default(),
            stalls: Stalls::default(),
            gate: Gate::default(),
            ledger,
            sequence: AtomicU64::new(1),
            attempts: Mutex::default(),
            saga_data: Mutex::default(),
        }
    }

    /// The saga data the handler of `action` on `order_id` read, if it ran.
    pub fn saga_data_seen(&self, action: &'static str, order_id: u64) -> Option<choreo::SagaData> {
        self.saga_data
            .lock()
            .unwrap()
            .get(&(action, order_id))
            .cloned()
    }

    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().unwrap().clone()
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    /// Records an effect of a handler: on a SQL store, in the handling's transaction.
    pub async fn record(
        &self,
        cx: &Context,
        service: &'static str,
        action: &'static str,
        order_id: u64,
    ) -> Result<(), HandlerError> {
        self.saga_data
            .lock()
            .unwrap()
            .insert((action, order_id), cx.saga_data().clone());
        let seq = self.sequence.fetch_add(1, Ordering::SeqCst);
        match &self.ledger {
            Ledger::Memory(effects) => {
                effects
                    .lock()
                    .unwrap()
                    .push((seq, effect(service, action, order_id)));
                Ok(())
            }
            #[cfg(feature = "sqlite")]
            Ledger::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                cx.sqlite(move |db| {
                    db.execute(
                        INSERT_SQLITE,
                        (seq as i64, service, action, order_id as i64),
                    )
                })
                .await?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(_) => {
                use choreo::postgres::PostgresExt;
                let mut db = cx.postgres().await?;
                insert_postgres(&mut db, seq, service, action, order_id).await?;
                Ok(())
            }
        }
    }

    /// Records an effect of the caller that starts a saga, in its transaction.
    pub async fn record_in(
        &self,
        tx: &SagaTransaction,
        service: &'static str,
        action: &'static str,
        order_id: u64,
    ) {
        let seq = self.sequence.fetch_add(1, Ordering::SeqCst);
        match &self.ledger {
            Ledger::Memory(effects) => effects
                .lock()
                .unwrap()
                .push((seq, effect(service, action, order_id))),
            #[cfg(feature = "sqlite")]
            Ledger::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                tx.sqlite(move |db| {
                    db.execute(
                        INSERT_SQLITE,
                        (seq as i64, service, action, order_id as i64),
                    )
                })
                .await
                .unwrap();
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(_) => {
                use choreo::postgres::PostgresExt;
                let mut db = tx.postgres().await.unwrap();
                insert_postgres(&mut db, seq, service, action, order_id)
                    .await
                    .unwrap();
            }
        }
        let _ = tx;
    }

    /// Whether effects commit with the handling (a SQL store) or not (memory).
    pub fn is_transactional(&self) -> bool {
        !matches!(self.ledger, Ledger::Memory(_))
    }

    /// Counts an attempt of `action` for `order_id` and returns its number, from 1.
    pub fn attempt(&self, action: &'static str, order_id: u64) -> u32 {
        let mut attempts = self.attempts.lock().unwrap();
        let count = attempts.entry((action, order_id)).or_default();
        *count += 1;
        *count
    }

    pub fn attempts(&self, action: &'static str, order_id: u64) -> u32 {
        self.attempts
            .lock()
            .unwrap()
            .get(&(action, order_id))
            .copied()
            .unwrap_or(0)
    }

    /// Every effect on `order_id`, in the order they happened.
    pub async fn effects(&self, order_id: u64) -> Vec<Effect> {
        self.all_effects()
            .await
            .into_iter()
            .filter(|effect| effect.order_id == order_id)
            .collect()
    }

    /// Every committed effect, in the order they happened.
    pub async fn all_effects(&self) -> Vec<Effect> {
        let mut rows: Vec<(u64, Effect)> = match &self.ledger {
            Ledger::Memory(effects) => effects.lock().unwrap().clone(),
            #[cfg(feature = "sqlite")]
            Ledger::Sqlite(directory) => {
                let mut rows = Vec::new();
                for service in SERVICES {
                    let db = choreo::sqlite::rusqlite::Connection::open(
                        directory.join(format!("{service}.db")),
                    )
                    .unwrap();
                    let mut statement = db
                        .prepare("SELECT seq, service, action, order_id FROM ledger")
                        .unwrap();
                    let found = statement
                        .query_map([], |row| {
                            let service: String = row.get(1)?;
                            let action: String = row.get(2)?;
                            Ok((
                                row.get::<_, i64>(0)? as u64,
                                effect(
                                    known(&SERVICES, &service),
                                    known(&ACTIONS, &action),
                                    row.get::<_, i64>(3)? as u64,
                                ),
                            ))
                        })
                        .unwrap();
                    rows.extend(found.map(Result::unwrap));
                }
                rows
            }
            #[cfg(feature = "postgres")]
            Ledger::Postgres(pool) => {
                use choreo::postgres::sqlx::{self, Row};
                sqlx::query("SELECT seq, service, action, order_id FROM ledger")
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|row| {
                        let service: String = row.get(1);
                        let action: String = row.get(2);
                        (
                            row.get::<i64, _>(0) as u64,
                            effect(
                                known(&SERVICES, &service),
                                known(&ACTIONS, &action),
                                row.get::<i64, _>(3) as u64,
                            ),
                        )
                    })
                    .collect()
            }
        };
        rows.sort_by_key(|(seq, _)| *seq);
        rows.into_iter().map(|(_, effect)| effect).collect()
    }
}

#[cfg(feature = "sqlite")]
const INSERT_SQLITE: &str =
    "INSERT INTO ledger (seq, service, action, order_id) VALUES (?1, ?2, ?3, ?4)";

/// The ledger table of a SQLite file, made before its service first opens it.
#[cfg(feature = "sqlite")]
pub fn create_sqlite_ledger(path: &std::path::Path) {
    let db = choreo::sqlite::rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger (
            seq INTEGER PRIMARY KEY, service TEXT NOT NULL, action TEXT NOT NULL,
            order_id INTEGER NOT NULL
        )",
    )
    .unwrap();
}

#[cfg(feature = "postgres")]
pub async fn create_postgres_ledger(pool: &choreo::postgres::sqlx::PgPool) {
    choreo::postgres::sqlx::query(
        "CREATE TABLE IF NOT EXISTS ledger (
            seq BIGINT PRIMARY KEY, service TEXT NOT NULL, action TEXT NOT NULL,
            order_id BIGINT NOT NULL
        )",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[cfg(feature = "postgres")]
async fn insert_postgres(
    db: &mut choreo::postgres::sqlx::PgConnection,
    seq: u64,
    service: &str,
    action: &str,
    order_id: u64,
) -> Result<(), choreo::postgres::sqlx::Error> {
    choreo::postgres::sqlx::query(
        "INSERT INTO ledger (seq, service, action, order_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(seq as i64)
    .bind(service)
    .bind(action)
    .bind(order_id as i64)
    .execute(db)
    .await?;
    Ok(())
}

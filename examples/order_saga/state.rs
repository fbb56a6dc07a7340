//! Where the services keep their business state: orders' statuses, payments' available
//! credit, inventory's stock.
//!
//! With `memory://` it lives in this process, as the sagas' state does. With a SQL store it
//! lives in the service's own store database, in tables the service creates at start, and
//! every step and compensation writes it in the handling's transaction: the business change
//! commits with the saga's journal entry, or neither does, and a restarted process goes on
//! from where it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use choreo::{Context, HandlerError, SagaTransaction, StoreUrl};

/// The starting state: what a fresh store begins with.
pub(crate) const CREDIT_CENTS: u64 = 10_000;
pub(crate) const STOCK: [(&str, u32); 3] = [("book", 3), ("vinyl", 0), ("espresso-machine", 1)];

/// One service's business state, wherever it lives.
#[derive(Clone)]
pub(crate) enum State {
    Memory(Arc<Memory>),
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres(choreo::postgres::sqlx::PgPool),
}

/// The state of all three services in process memory.
pub(crate) struct Memory {
    statuses: Mutex<HashMap<u64, &'static str>>,
    credit_cents: Mutex<u64>,
    stock: Mutex<HashMap<String, u32>>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            statuses: Mutex::default(),
            credit_cents: Mutex::new(CREDIT_CENTS),
            stock: Mutex::new(
                STOCK
                    .iter()
                    .map(|(sku, count)| ((*sku).to_owned(), *count))
                    .collect(),
            ),
        }
    }
}

#[cfg(feature = "sqlite")]
const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS order_status (order_id INTEGER PRIMARY KEY, status TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS credit (account TEXT PRIMARY KEY, available_cents INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL);
";

#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS order_status (order_id BIGINT PRIMARY KEY, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS credit (account TEXT PRIMARY KEY, available_cents BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL)",
];

impl State {
    /// The state of a service whose store is at `url`, its tables made (and filled with the
    /// starting state) if they are not there yet. `memory` is the in-process state.
    pub(crate) async fn open(url: &str, memory: &Arc<Memory>) -> anyhow::Result<Self> {
        let url = StoreUrl::parse(url)?;
        match url.scheme() {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                // The application's own tables, made with a connection of its own before the
                // service opens the file; handlers then write them in their transactions.
                let path = choreo::sqlite::SqliteConfig::from_url(&url)?.path;
                if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(directory)?;
                }
                let db = choreo::sqlite::rusqlite::Connection::open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                db.execute_batch(SQLITE_SCHEMA)?;
                db.execute(
                    "INSERT OR IGNORE INTO credit (account, available_cents) VALUES ('main', ?1)",
                    [CREDIT_CENTS as i64],
                )?;
                for (sku, count) in STOCK {
                    db.execute(
                        "INSERT OR IGNORE INTO stock (sku, available) VALUES (?1, ?2)",
                        (sku, count),
                    )?;
                }
                Ok(Self::Sqlite(path))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                use choreo::postgres::sqlx;
                let pool = sqlx::PgPool::connect(url.as_str()).await?;
                for statement in POSTGRES_SCHEMA {
                    sqlx::query(statement).execute(&pool).await?;
                }
                sqlx::query(
                    "INSERT INTO credit (account, available_cents) VALUES ('main', $1) ON CONFLICT DO NOTHING",
                )
                .bind(CREDIT_CENTS as i64)
                .execute(&pool)
                .await?;
                for (sku, count) in STOCK {
                    sqlx::query(
                        "INSERT INTO stock (sku, available) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    )
                    .bind(sku)
                    .bind(count as i32)
                    .execute(&pool)
                    .await?;
                }
                Ok(Self::Postgres(pool))
            }
            _ => Ok(Self::Memory(Arc::clone(memory))),
        }
    }

    /// Orders: the order is pending, in the caller's transaction that starts its saga.
    pub(crate) async fn order_placed(
        &self,
        tx: &SagaTransaction,
        order_id: u64,
    ) -> anyhow::Result<()> {
        match self {
            Self::Memory(memory) => set_status(memory, order_id, "pending"),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                tx.sqlite(move |db| db.execute(UPSERT_STATUS_SQLITE, (order_id as i64, "pending")))
                    .await?;
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::PostgresExt;
                let mut db = tx.postgres().await?;
                upsert_status_postgres(&mut db, order_id, "pending").await?;
            }
        }
        Ok(())
    }

    /// Orders: the order's new status, in the handling's transaction.
    pub(crate) async fn set_status(
        &self,
        cx: &Context,
        order_id: u64,
        status: &'static str,
    ) -> Result<(), HandlerError> {
        match self {
            Self::Memory(memory) => set_status(memory, order_id, status),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                cx.sqlite(move |db| db.execute(UPSERT_STATUS_SQLITE, (order_id as i64, status)))
                    .await?;
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::PostgresExt;
                let mut db = cx.postgres().await?;
                upsert_status_postgres(&mut db, order_id, status).await?;
            }
        }
        Ok(())
    }

    /// Payments: takes `amount_cents` from the available credit; `false` if there is not
    /// enough.
    pub(crate) async fn reserve_credit(
        &self,
        cx: &Context,
        amount_cents: u64,
    ) -> Result<bool, HandlerError> {
        match self {
            Self::Memory(memory) => {
                let mut available = memory.credit_cents.lock().unwrap();
                let enough = *available >= amount_cents;
                if enough {
                    *available -= amount_cents;
                }
                Ok(enough)
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                let updated = cx
                    .sqlite(move |db| {
                        db.execute(
                            "UPDATE credit SET available_cents = available_cents - ?1
                             WHERE account = 'main' AND available_cents >= ?1",
                            [amount_cents as i64],
                        )
                    })
                    .await?;
                Ok(updated == 1)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::{sqlx, PostgresExt};
                let mut db = cx.postgres().await?;
                let updated = sqlx::query(
                    "UPDATE credit SET available_cents = available_cents - $1
                     WHERE account = 'main' AND available_cents >= $1",
                )
                .bind(amount_cents as i64)
                .execute(&mut *db)
                .await?;
                Ok(updated.rows_affected() == 1)
            }
        }
    }

    /// Payments: gives `amount_cents` back.
    pub(crate) async fn release_credit(
        &self,
        cx: &Context,
        amount_cents: u64,
    ) -> Result<(), HandlerError> {
        match self {
            Self::Memory(memory) => *memory.credit_cents.lock().unwrap() += amount_cents,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                cx.sqlite(move |db| {
                    db.execute(
                        "UPDATE credit SET available_cents = available_cents + ?1 WHERE account = 'main'",
                        [amount_cents as i64],
                    )
                })
                .await?;
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::{sqlx, PostgresExt};
                let mut db = cx.postgres().await?;
                sqlx::query(
                    "UPDATE credit SET available_cents = available_cents + $1 WHERE account = 'main'",
                )
                .bind(amount_cents as i64)
                .execute(&mut *db)
                .await?;
            }
        }
        Ok(())
    }

    /// Inventory: takes one `sku` from the stock; `false` if there is none left.
    pub(crate) async fn reserve_stock(
        &self,
        cx: &Context,
        sku: &str,
    ) -> Result<bool, HandlerError> {
        let sku = sku.to_owned();
        match self {
            Self::Memory(memory) => {
                let mut stock = memory.stock.lock().unwrap();
                let left = stock.entry(sku).or_default();
                let available = *left > 0;
                if available {
                    *left -= 1;
                }
                Ok(available)
            }
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                let updated = cx
                    .sqlite(move |db| {
                        db.execute(
                            "UPDATE stock SET available = available - 1 WHERE sku = ?1 AND available > 0",
                            [sku],
                        )
                    })
                    .await?;
                Ok(updated == 1)
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::{sqlx, PostgresExt};
                let mut db = cx.postgres().await?;
                let updated = sqlx::query(
                    "UPDATE stock SET available = available - 1 WHERE sku = $1 AND available > 0",
                )
                .bind(sku)
                .execute(&mut *db)
                .await?;
                Ok(updated.rows_affected() == 1)
            }
        }
    }

    /// Inventory: puts one `sku` back.
    pub(crate) async fn release_stock(&self, cx: &Context, sku: &str) -> Result<(), HandlerError> {
        let sku = sku.to_owned();
        match self {
            Self::Memory(memory) => *memory.stock.lock().unwrap().entry(sku).or_default() += 1,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => {
                use choreo::sqlite::SqliteExt;
                cx.sqlite(move |db| {
                    db.execute(
                        "UPDATE stock SET available = available + 1 WHERE sku = ?1",
                        [sku],
                    )
                })
                .await?;
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                use choreo::postgres::{sqlx, PostgresExt};
                let mut db = cx.postgres().await?;
                sqlx::query("UPDATE stock SET available = available + 1 WHERE sku = $1")
                    .bind(sku)
                    .execute(&mut *db)
                    .await?;
            }
        }
        Ok(())
    }

    /// What the state says now: order statuses, available credit, stock by SKU.
    pub(crate) async fn summary(&self) -> anyhow::Result<Summary> {
        match self {
            Self::Memory(memory) => Ok(Summary {
                statuses: memory
                    .statuses
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(id, status)| (*id, (*status).to_owned()))
                    .collect(),
                credit_cents: *memory.credit_cents.lock().unwrap(),
                stock: sorted(
                    memory
                        .stock
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(s, n)| (s.clone(), *n)),
                ),
            }),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(path) => {
                let db = choreo::sqlite::rusqlite::Connection::open(path)?;
                let mut statuses = HashMap::new();
                let mut statement = db.prepare("SELECT order_id, status FROM order_status")?;
                for row in
                    statement.query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)))?
                {
                    let (id, status) = row?;
                    statuses.insert(id as u64, status);
                }
                let credit: i64 = db.query_row(
                    "SELECT available_cents FROM credit WHERE account = 'main'",
                    [],
                    |row| row.get(0),
                )?;
                let mut statement = db.prepare("SELECT sku, available FROM stock")?;
                let stock = statement
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Summary {
                    statuses,
                    credit_cents: credit as u64,
                    stock: sorted(stock),
                })
            }
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => {
                use choreo::postgres::sqlx::{self, Row};
                let statuses = sqlx::query("SELECT order_id, status FROM order_status")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| (row.get::<i64, _>(0) as u64, row.get(1)))
                    .collect();
                let credit: i64 =
                    sqlx::query("SELECT available_cents FROM credit WHERE account = 'main'")
                        .fetch_one(pool)
                        .await?
                        .get(0);
                let stock = sqlx::query("SELECT sku, available FROM stock")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| (row.get(0), row.get::<i32, _>(1) as u32))
                    .collect::<Vec<_>>();
                Ok(Summary {
                    statuses,
                    credit_cents: credit as u64,
                    stock: sorted(stock),
                })
            }
        }
    }
}

/// The business state at one moment.
pub(crate) struct Summary {
    pub(crate) statuses: HashMap<u64, String>,
    pub(crate) credit_cents: u64,
    pub(crate) stock: Vec<(String, u32)>,
}

fn set_status(memory: &Memory, order_id: u64, status: &'static str) {
    memory.statuses.lock().unwrap().insert(order_id, status);
}

fn sorted(stock: impl IntoIterator<Item = (String, u32)>) -> Vec<(String, u32)> {
    let mut stock: Vec<_> = stock.into_iter().collect();
    stock.sort();
    stock
}

#[cfg(feature = "sqlite")]
const UPSERT_STATUS_SQLITE: &str = "INSERT INTO order_status (order_id, status) VALUES (?1, ?2)
     ON CONFLICT (order_id) DO UPDATE SET status = excluded.status";

#[cfg(feature = "postgres")]
async fn upsert_status_postgres(
    db: &mut choreo::postgres::sqlx::PgConnection,
    order_id: u64,
    status: &str,
) -> Result<(), choreo::postgres::sqlx::Error> {
    choreo::postgres::sqlx::query(
        "INSERT INTO order_status (order_id, status) VALUES ($1, $2)
         ON CONFLICT (order_id) DO UPDATE SET status = excluded.status",
    )
    .bind(order_id as i64)
    .bind(status)
    .execute(db)
    .await?;
    Ok(())
}

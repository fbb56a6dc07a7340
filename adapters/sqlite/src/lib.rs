//! The SQLite store of choreo: a service's saga state (journal, inbox, outbox) in one file,
//! with no server to run. What `sqlite://PATH` opens.
//!
//! - The file is created if missing (with its directory), the schema migrated on open
//!   (migrations/, recorded in `choreo_migrations`), in write-ahead-log mode.
//! - Every handling of an event commits as one SQLite transaction. Handlings that arrive
//!   together commit together (a group commit), which is what makes the store fast; see
//!   docs/stores.md.
//! - A handler writes its business data in the handling's transaction with
//!   [`SqliteExt::sqlite`]: `cx.sqlite(|db| db.execute(..)).await?`, on
//!   [rusqlite]'s connection. It commits with the journal entry and the inbox record, or
//!   not at all.
//! - One process writes the file at a time: a service with several instances needs the
//!   PostgreSQL store.
//!
//! Built on rusqlite rather than sqlx: measured on the store's own hot path (two reads and
//! a few inserts per handling, many handlings at once), sqlx's SQLite driver, which moves
//! every statement to a worker thread and back, reached a tenth of the throughput of
//! rusqlite statements batched in one transaction.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod config;
mod known;
mod marks;
mod schema;
mod worker;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use choreo_core::store::{Commit, Loaded, Purged, Recovery, Sent};
use choreo_core::{
    Context, EventId, HandlerError, OpenStoreError, SagaId, SagaTransaction, Store, StoreError,
    StoreTransaction, StoreUrl, TransactionGuard,
};
pub use rusqlite;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use crate::config::{SqliteConfig, Synchronous};
use crate::worker::{Job, Request, Worker, Write};

/// A service's saga state in a SQLite file. Clones share the connection.
#[derive(Clone)]
pub struct SqliteStore {
    worker: Arc<Worker>,
    cache: Arc<cache::Cache>,
    path: Arc<PathBuf>,
    transactions: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens the store a `sqlite://PATH?...` URL names (see [`SqliteConfig::from_url`]).
    pub async fn open(url: &StoreUrl) -> Result<Self, OpenStoreError> {
        Self::open_with(SqliteConfig::from_url(url)?).await
    }

    /// Opens, creating it if missing, the file `config` names and migrates its schema.
    pub async fn open_with(config: SqliteConfig) -> Result<Self, OpenStoreError> {
        let path = config.path.clone();
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| OpenStoreError::Open {
            url: format!("sqlite://{}", path.display()),
            source,
        };
        let checkpoint = config.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let writer = connect(&config)?;
            let reader = connect(&config)?;
            let known = schema::known(&reader)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((writer, reader, known))
        })
        .await
        .map_err(|error| failed(error.into()))?;
        let (writer, reader, known) = opened.map_err(|error| {
            failed(
                format!(
                    "cannot open `{}` as a SQLite database: {error}; expected a writable file path (created if missing)",
                    path.display()
                )
                .into(),
            )
        })?;
        let cache = Arc::new(cache::Cache::new(known));
        let worker = Worker::new(writer, reader, Arc::clone(&cache));
        checkpoints(&checkpoint, Arc::downgrade(&worker));
        Ok(Self {
            worker,
            cache,
            path: Arc::new(path),
            transactions: Arc::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file whose lock an instance of `service` running on the database at `path` holds:
/// beside it, named after both (characters a file name cannot hold percent-encoded).
fn hold_path(path: &Path, service: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    for byte in service.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.".contains(&byte) {
            name.push(char::from(byte).to_string());
        } else {
            name.push(format!("%{byte:02X}"));
        }
    }
    name.push(".lock");
    path.with_file_name(name)
}

fn connect(config: &SqliteConfig) -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(directory) = config
        .path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(directory).map_err(|error| {
            format!("cannot create directory `{}`: {error}", directory.display())
        })?;
    }
    let mut conn = Connection::open_with_flags(
        &config.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(config.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "the file system does not allow write-ahead logging (journal mode `{mode}`)"
        )
        .into());
    }
    conn.pragma_update(None, "synchronous", config.synchronous.pragma())?;
    // Checkpoints run on the store's own thread (see `checkpoints`), not in commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// How often the checkpoint thread copies the log into the database file.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies the write-ahead log into the database file every `CHECKPOINT_INTERVAL`, on a
/// connection and a thread of its own, while the store lives: the log stays small and
/// commits never wait for a checkpoint's disk writes.
fn checkpoints(config: &SqliteConfig, store: std::sync::Weak<Worker>) {
    let config = config.clone();
    let spawned = std::thread::Builder::new()
        .name("choreo-sqlite-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = Connection::open(&config.path) else {
                return;
            };
            let _ = conn.busy_timeout(config.busy_timeout);
            while store.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(path = %config.path.display(), %error, "cannot checkpoint the SQLite log");
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the SQLite checkpoint thread; the log is checkpointed on close only");
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn is_durable(&self) -> bool {
        true
    }

    async fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Result<Loaded, StoreError> {
        if let Some(loaded) = self.cache.load(service, saga, event) {
            return Ok(loaded);
        }
        // Not kept in the cache: only the worker changes it, as commits land.
        let (record, handled) = self
            .worker
            .read(|conn| schema::load(conn, service, saga))
            .map_err(StoreError::new)?;
        Ok(Loaded {
            record,
            handled: event.is_some_and(|event| handled.contains(&event)),
            // One instance per service: no versions are kept.
            version: 0,
        })
    }

    async fn begin(&self) -> Result<Box<dyn StoreTransaction>, StoreError> {
        let id = self.transactions.fetch_add(1, Ordering::Relaxed);
        // Made before asking, so that a caller dropped while waiting still rolls it back.
        let transaction = SqliteTransaction {
            worker: Arc::clone(&self.worker),
            id,
            finished: false,
        };
        self.worker
            .ask(|reply| Request::Begin { id, reply })
            .await?;
        Ok(Box::new(transaction))
    }

    async fn commit(
        &self,
        commits: Vec<Commit>,
        transaction: Option<Box<dyn StoreTransaction>>,
    ) -> Result<(), StoreError> {
        let Some(transaction) = transaction else {
            return self
                .worker
                .ask(|reply| Request::Write(Write::Commit { commits, reply }))
                .await;
        };
        let transaction: Box<dyn Any + Send> = transaction;
        let Ok(mut transaction) = transaction.downcast::<SqliteTransaction>() else {
            return Err(StoreError::unsupported(
                "the SQLite store cannot commit a transaction of another store",
            ));
        };
        if !Arc::ptr_eq(&transaction.worker, &self.worker) {
            return Err(StoreError::unsupported(
                "the SQLite store cannot commit a transaction of another file",
            ));
        }
        transaction.finished = true;
        let id = transaction.id;
        self.worker
            .ask(|reply| Request::CommitIn { id, commits, reply })
            .await
    }

    async fn mark_sent(&self, service: &str, sent: &[Sent]) -> Result<(), StoreError> {
        let (owned, marked) = (service.to_owned(), sent.to_vec());
        self.worker
            .ask(|reply| {
                Request::Write(Write::MarkSent {
                    service: owned,
                    sent: marked,
                    reply: Some(reply),
                })
            })
            .await
    }

    async fn hold(&self, service: &str) -> Result<Box<dyn Any + Send + Sync>, StoreError> {
        let path = hold_path(&self.path, service);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| {
                StoreError::new(format!("cannot open `{}`: {error}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::conflict(format!(
                "another instance of service `{service}` is running on this SQLite file (it holds `{}`); SQLite keeps one instance per service: run several on a PostgreSQL store (`postgres://...`)",
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(error)) => Err(StoreError::new(format!(
                "cannot lock `{}`: {error}",
                path.display()
            ))),
        }
    }

    async fn recover(&self, service: &str) -> Result<Recovery, StoreError> {
        // Marks waiting for their saga's next write are written first.
        self.worker
            .ask(|reply| Request::Write(Write::Flush { reply }))
            .await?;
        self.worker
            .read(|conn| schema::recover(conn, service))
            .map_err(StoreError::new)
    }

    async fn purge(&self, service: &str, before: SystemTime) -> Result<Purged, StoreError> {
        let owned = service.to_owned();
        self.worker
            .ask(|reply| {
                Request::Write(Write::Purge {
                    service: owned,
                    before,
                    reply,
                })
            })
            .await
    }
}

/// A handling's open transaction on a SQLite store; it holds the file's write lock. Dropped
/// uncommitted, it rolls back.
pub struct SqliteTransaction {
    worker: Arc<Worker>,
    id: u64,
    finished: bool,
}

impl SqliteTransaction {
    /// Runs `work` on the store's connection, inside this transaction. Do not commit or
    /// roll back in it: the handling does.
    pub async fn run<T, F>(&mut self, work: F) -> Result<T, SqliteError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                None => Err(SqliteError::Closed),
                Some(conn) => match std::panic::catch_unwind(AssertUnwindSafe(|| work(conn))) {
                    Ok(result) => result.map_err(SqliteError::from),
                    Err(panic) => Err(SqliteError::Panicked(
                        panic
                            .downcast_ref::<&str>()
                            .map(|message| (*message).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default(),
                    )),
                },
            };
            let _ = reply.send(result);
        });
        self.worker.submit(Request::Run { id: self.id, job });
        answer.await.unwrap_or(Err(SqliteError::Closed))
    }
}

#[async_trait]
impl StoreTransaction for SqliteTransaction {
    async fn rollback(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        let id = self.id;
        self.worker
            .ask(|reply| Request::Rollback {
                id,
                reply: Some(reply),
            })
            .await
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if !self.finished {
            self.worker.submit_detached(Request::Rollback {
                id: self.id,
                reply: None,
            });
        }
    }
}

impl fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTransaction")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why work in a SQLite transaction failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// SQLite refused it.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction had ended (it failed, or was rolled back).
    #[error("the transaction is no longer open")]
    Closed,
    /// The work panicked.
    #[error("the work in the transaction panicked: {0}")]
    Panicked(String),
    /// The transaction could not be begun.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store is not a SQLite store.
    #[error("the store is `{0}`, not SQLite: open it from a `sqlite://` URL to use `sqlite()`")]
    NotSqlite(&'static str),
}

impl SqliteError {
    /// Whether trying again may help: the database was busy or the disk failed, rather than
    /// the statement being wrong or a constraint refusing it.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode;
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DiskFull
                    | ErrorCode::OutOfMemory
            ),
            Self::Sqlite(_) | Self::NotSqlite(_) | Self::Panicked(_) => false,
            Self::Store(error) => !error.is_unsupported(),
            Self::Closed => true,
        }
    }
}

/// The handler error for `error`: transient or permanent as [`SqliteError::is_transient`]
/// says.
fn handler_error(error: SqliteError) -> HandlerError {
    if error.is_transient() {
        HandlerError::transient(error)
    } else {
        HandlerError::permanent(error)
    }
}

/// Business writes in the handling's (or the caller's) SQLite transaction.
///
/// ```no_run
/// use choreo_sqlite::SqliteExt;
/// # async fn reserve(cx: choreo_core::Context, amount: i64) -> Result<bool, choreo_core::HandlerError> {
/// let reserved = cx
///     .sqlite(move |db| {
///         db.execute(
///             "UPDATE credit SET available = available - ?1 WHERE available >= ?1",
///             [amount],
///         )
///     })
///     .await?;
/// Ok(reserved == 1)
/// # }
/// ```
pub trait SqliteExt {
    /// The error of a failed `sqlite` call.
    type Error;

    /// Runs `work` on the store's connection inside the transaction, begun on first use.
    /// It runs where the store's queued writes do, in a task on the runtime: keep it short
    /// and do not block in it.
    fn sqlite<T, F>(&self, work: F) -> impl Future<Output = Result<T, Self::Error>> + Send
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static;
}

/// In a step or a compensation: errors are [`HandlerError`]s, permanent for a wrong store
/// or a statement SQLite refuses, transient for a busy database or a disk failure.
impl SqliteExt for Context {
    type Error = HandlerError;

    async fn sqlite<T, F>(&self, work: F) -> Result<T, HandlerError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let guard = self.transaction().await?;
        run_in(guard, work).await.map_err(handler_error)
    }
}

/// In a caller's transaction that starts sagas.
impl SqliteExt for SagaTransaction {
    type Error = SqliteError;

    async fn sqlite<T, F>(&self, work: F) -> Result<T, SqliteError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        run_in(self.transaction().await?, work).await
    }
}

/// Runs `work` in the SQLite transaction `guard` holds.
async fn run_in<T, F>(mut guard: TransactionGuard, work: F) -> Result<T, SqliteError>
where
    F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let store = guard.store();
    let transaction = guard
        .downcast_mut::<SqliteTransaction>()
        .ok_or(SqliteError::NotSqlite(store))?;
    transaction.run(work).await
}

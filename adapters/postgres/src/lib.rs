//! The PostgreSQL store of choreo, on [sqlx]: saga state in one database that several
//! services, and several instances of each, share.
//!
//! What it keeps, per service (every row is keyed by the service's name first, so services
//! share a database without seeing each other's state):
//!
//! - `choreo_sagas`: the journal, one record per saga: its deadline, status (and abort
//!   reason), whether this service started it, published an abort of its own, acknowledged
//!   its compensation, and the abort it compensates for;
//! - `choreo_steps`: the steps of each record in order: the event each handled, the event
//!   it emitted (which its compensation receives, and which is published from here), whether
//!   that was withheld or published, and the compensation's state;
//! - `choreo_inbox`: ids of the events it handled, with their saga's deadline, so that a
//!   redelivery is recognised until the saga is purged;
//! - `choreo_outbox`: runtime events (aborts, acknowledgements) and dead letters still to
//!   send.
//!
//! Ids are native `uuid`s; instants are `BIGINT` nanoseconds since the Unix epoch, so they
//! round-trip exactly; events are their CloudEvents structured-mode JSON text. The schema is
//! created and migrated when the store opens, by sqlx's migrator with the migrations this
//! crate embeds (`migrations/`), tracked in the table `choreo_migrations` so that it never
//! meets an application's own sqlx migrations (`_sqlx_migrations`) in the same database.
//!
//! # Opening
//!
//! `postgres://user:pass@host:port/database?option=value&...` (or `postgresql://`): see
//! [`PostgresConfig`] for choreo's options; the rest of the URL is sqlx's (`sslmode`, ...).
//! Opening waits up to `connect.timeout.ms` (10 s) for the server, and fails with a message
//! that says what was expected: no server answering, a password refused, a database missing.
//! Passwords never appear in errors, logs or `Debug` output.
//!
//! # Round trips
//!
//! [`Store::load`] is one query (the record, its steps and the inbox flag);
//! [`Store::commit`] is one statement for everything a call commits, atomic on its own, plus
//! the `COMMIT` when it runs in a handler's transaction; [`Store::mark_sent`] is one
//! statement for a whole batch. Connections come from a pool (`pool.max_connections`); sqlx
//! checks a connection when it goes back to the pool, not again when it is taken.
//!
//! # Business writes in the handling's transaction
//!
//! A step writes its own rows in the handling's transaction with [`PostgresExt`]; they
//! commit with the step's journal entry and inbox record, or not at all:
//!
//! ```no_run
//! use choreo_core::{Context, HandlerError};
//! use choreo_postgres::{sqlx, PostgresExt};
//!
//! async fn reserve_stock(order_id: i64, cx: Context) -> Result<(), HandlerError> {
//!     sqlx::query("UPDATE stock SET reserved = reserved + 1 WHERE order_id = $1")
//!         .bind(order_id)
//!         .execute(cx.postgres().await?.connection())
//!         .await?;
//!     Ok(())
//! }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod codec;
mod commit;
mod config;
mod connect;
mod sql;
mod transaction;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use choreo_core::journal::{SagaRecord, StepRecord};
use choreo_core::store::{
    ActiveSaga, Claim, Claimed, Commit, Loaded, Outgoing, OutgoingKind, Purged, Recovery,
    SagaHeader, Sent, SentKind,
};
use choreo_core::{
    Deadline, EventId, OpenStoreError, SagaId, Store, StoreError, StoreTransaction, StoreUrl,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use uuid::Uuid;

pub use sqlx;

pub use crate::config::PostgresConfig;
pub use crate::transaction::{PostgresExt, PostgresGuard, PostgresTransaction};

/// The table sqlx's migrator tracks this crate's migrations in.
const MIGRATIONS_TABLE: &str = "choreo_migrations";

/// The schema's migrations, embedded at build time, tracked in [`MIGRATIONS_TABLE`].
fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!();
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// Saga state in a PostgreSQL database: what `postgres://` opens. Clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    config: PostgresConfig,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.config)
            .field("connections", &self.pool.size())
            .finish()
    }
}

impl PostgresStore {
    /// Opens the store at a `postgres://` URL: reaches the server within
    /// `connect.timeout.ms`, creates or migrates choreo's tables, and opens the pool.
    pub async fn open(url: &StoreUrl) -> Result<Self, OpenStoreError> {
        let config = PostgresConfig::from_url(url)?;
        // A connection of its own first, so that a server that cannot be reached, a
        // password refused or a database missing is said in so many words.
        let connection = connect::connect(&config)
            .await
            .map_err(|message| url.open_failed(message))?;
        let _ = connection.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            // sqlx pings every connection when it goes back to the pool; pinging it again when
            // it is taken would cost a round trip on every store call.
            .test_before_acquire(false)
            .connect_lazy_with(config.connect_options().clone());
        // Through the pool: with a `&mut PgConnection`, sqlx's `Acquire` bound makes the
        // migration's future "not general enough" to be `Send` where callers need it.
        if let Err(error) = migrator().run(&pool).await {
            // Closing also releases the migrator's advisory lock if it failed half way.
            pool.close().await;
            return Err(url.open_failed(format!(
                "cannot create or migrate choreo's tables in database `{}` at {} \
                 (migrations tracked in `{MIGRATIONS_TABLE}`): {}",
                config.database(),
                config.address(),
                migration_failure(&error)
            )));
        }
        tracing::debug!(url = %config.redacted(), "PostgreSQL store open");
        Ok(Self { pool, config })
    }

    /// The connection pool, for code beside choreo that uses the same database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The settings in use.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// `call`, made again while it fails on a connection that broke before it was used: a
    /// pooled connection outlives a restart of the server unnoticed (sqlx checks them when
    /// they go back to the pool, not when they are taken), so after one every idle
    /// connection fails once. Only for calls that may be made twice: reads, writes that
    /// are idempotent, and a commit on its own (one statement; should one that landed be
    /// made again, it finds the record at a newer version and is refused as a conflict, so
    /// the handling is made again from what landed).
    async fn again_if_broken<T, F, Fut>(&self, mut call: F) -> Result<T, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut attempts = 0;
        loop {
            match call().await {
                Err(error) if attempts < self.config.max_connections && broken(&error) => {
                    attempts += 1;
                    tracing::debug!(%error, attempts, "a pooled PostgreSQL connection was broken; trying another");
                }
                result => return result,
            }
        }
    }

    /// The rows [`Store::recover`] reads, from one snapshot so that they agree.
    async fn recovery_rows(
        &self,
        service: &str,
    ) -> Result<(Vec<PgRow>, Vec<PgRow>, Vec<PgRow>, Vec<PgRow>), sqlx::Error> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let timers = sqlx::query(sql::RECOVER_TIMERS)
            .bind(service)
            .fetch_all(&mut *tx)
            .await?;
        let unfinished = sqlx::query(sql::RECOVER_UNFINISHED)
            .bind(service)
            .fetch_all(&mut *tx)
            .await?;
        let steps = sqlx::query(sql::RECOVER_STEPS)
            .bind(service)
            .fetch_all(&mut *tx)
            .await?;
        let outbox = sqlx::query(sql::RECOVER_OUTBOX)
            .bind(service)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((timers, unfinished, steps, outbox))
    }
}

/// What went wrong migrating, and what to do about it.
fn migration_failure(error: &sqlx::migrate::MigrateError) -> String {
    use sqlx::migrate::MigrateError;

    let database = match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            error.as_database_error()
        }
        _ => None,
    };
    let code = database.and_then(|database| database.code().map(|code| code.into_owned()));
    match (error, code.as_deref()) {
        (_, Some("42501")) => {
            format!("{error}; the user needs the CREATE privilege on the database's default schema")
        }
        (MigrateError::VersionMissing(_), _) => format!(
            "{error}: a newer choreo-postgres migrated this database; run that version (or \
             newer) against it"
        ),
        (MigrateError::VersionMismatch(_), _) => format!(
            "{error}: the schema choreo created differs from what this version expects; \
             `{MIGRATIONS_TABLE}` says which migration"
        ),
        _ => error.to_string(),
    }
}

/// Whether `error` says the connection was lost (the server shut it, or the network), as
/// opposed to an answer about the statement.
fn broken(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        // Class 57P: operator intervention (admin_shutdown, crash_shutdown,
        // cannot_connect_now); class 08: connection exceptions.
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Result<Loaded, StoreError> {
        let row = self
            .again_if_broken(|| {
                sqlx::query(sql::LOAD)
                    .bind(service)
                    .bind(saga.as_uuid())
                    .bind(event.map(|event| event.as_uuid()))
                    .fetch_one(&self.pool)
            })
            .await
            .map_err(|error| failed(format!("loading saga {saga} of `{service}`"), error))?;
        loaded(saga, &row).map_err(|error| match error {
            Decode::Store(error) => error,
            Decode::Sql(error) => failed(format!("reading saga {saga} of `{service}`"), error),
        })
    }

    async fn begin(&self) -> Result<Box<dyn StoreTransaction>, StoreError> {
        let inner = self
            .again_if_broken(|| self.pool.begin())
            .await
            .map_err(|error| failed("beginning a transaction".to_owned(), error))?;
        Ok(Box::new(PostgresTransaction { inner }))
    }

    async fn commit(
        &self,
        commits: Vec<Commit>,
        transaction: Option<Box<dyn StoreTransaction>>,
    ) -> Result<(), StoreError> {
        let transaction = match transaction {
            None => None,
            Some(transaction) => Some(ours(transaction).await?),
        };
        let batch = match commit::Batch::of(&commits) {
            Ok(batch) => batch,
            Err(error) => {
                if let Some(transaction) = transaction {
                    let _ = transaction.inner.rollback().await;
                }
                return Err(error);
            }
        };
        match transaction {
            None if batch.is_empty() => Ok(()),
            None => {
                let attempts = std::sync::atomic::AtomicU32::new(0);
                let result = self
                    .again_if_broken(|| {
                        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        batch.query().execute(&self.pool)
                    })
                    .await;
                result.map(drop).map_err(|error| {
                    let failed = commit_failed(describe_commits(&commits), error);
                    if failed.is_conflict() && attempts.into_inner() > 1 {
                        // The attempt before may have landed, and this one found its own
                        // changes: not a lost race, an outcome not known.
                        StoreError::new(format!(
                            "{}: the connection broke while it committed, so whether it landed is not known ({failed})",
                            describe_commits(&commits)
                        ))
                    } else {
                        failed
                    }
                })
            }
            Some(mut transaction) => {
                if !batch.is_empty() {
                    if let Err(error) = batch.query().execute(transaction.connection()).await {
                        let _ = transaction.inner.rollback().await;
                        return Err(commit_failed(describe_commits(&commits), error));
                    }
                }
                transaction
                    .inner
                    .commit()
                    .await
                    .map_err(|error| commit_failed(describe_commits(&commits), error))
            }
        }
    }

    async fn mark_sent(&self, service: &str, sent: &[Sent]) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        let mut sent = sent.to_vec();
        // One order for every batch, so that two batches never wait on each other's rows.
        sent.sort_by_key(|sent| {
            let position = match sent.kind {
                SentKind::Step { position } => position,
                _ => 0,
            };
            (sent.saga_id, position, sent.event_id)
        });
        let (mut step_sagas, mut step_positions) = (Vec::new(), Vec::new());
        let (mut sagas, mut events, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        for sent in &sent {
            match (sent.kind, codec::sent_kind(sent.kind)) {
                (SentKind::Step { position }, _) => {
                    step_sagas.push(sent.saga_id.as_uuid());
                    step_positions.push(codec::position(position)?);
                }
                (_, Some(kind)) => {
                    sagas.push(sent.saga_id.as_uuid());
                    events.push(sent.event_id.as_uuid());
                    kinds.push(kind);
                }
                (_, None) => {}
            }
        }
        self.again_if_broken(|| {
            sqlx::query(sql::MARK_SENT)
                .bind(service)
                .bind(&step_sagas)
                .bind(&step_positions)
                .bind(&sagas)
                .bind(&events)
                .bind(&kinds)
                .execute(&self.pool)
        })
        .await
        .map(drop)
        .map_err(|error| {
            failed(
                format!("marking {} events of `{service}` sent", sent.len()),
                error,
            )
        })
    }

    async fn recover(&self, service: &str) -> Result<Recovery, StoreError> {
        let failure = |error| failed(format!("recovering the state of `{service}`"), error);
        let (timers, unfinished, steps, outbox) = self
            .again_if_broken(|| self.recovery_rows(service))
            .await
            .map_err(failure)?;
        recovered(&timers, &unfinished, &steps, &outbox).map_err(|error| match error {
            Decode::Store(error) => error,
            Decode::Sql(error) => failure(error),
        })
    }

    async fn claim(&self, service: &str, claim: &Claim) -> Result<Claimed, StoreError> {
        let failure = |error| failed(format!("claiming work left undone by `{service}`"), error);
        let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
        // Not made again on a broken connection: one that landed would leave its claims
        // unreturned; the next look claims what this one could not.
        let rows = sqlx::query(sql::CLAIM)
            .bind(service)
            .bind(codec::nanos_clamped(claim.deadlines_before))
            .bind(codec::nanos_clamped(claim.recorded_before))
            .bind(codec::nanos_clamped(claim.until))
            .bind(codec::nanos_clamped(claim.now))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(failure)?;
        claimed(&rows).map_err(|error| match error {
            Decode::Store(error) => error,
            Decode::Sql(error) => failure(error),
        })
    }

    async fn purge(&self, service: &str, before: SystemTime) -> Result<Purged, StoreError> {
        let failure = |error| failed(format!("purging the state of `{service}`"), error);
        let row = self
            .again_if_broken(|| {
                sqlx::query(sql::PURGE)
                    .bind(service)
                    .bind(codec::nanos_clamped(before))
                    .fetch_one(&self.pool)
            })
            .await
            .map_err(failure)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let count: i64 = row.try_get(column).map_err(failure)?;
            Ok(count.max(0) as u64)
        };
        Ok(Purged {
            sagas: count("sagas")?,
            handled: count("handled")?,
        })
    }
}

/// The transaction `transaction` as this store's; one another store began is rolled back
/// and refused.
async fn ours(
    transaction: Box<dyn StoreTransaction>,
) -> Result<Box<PostgresTransaction>, StoreError> {
    if !(&*transaction as &dyn Any).is::<PostgresTransaction>() {
        let _ = transaction.rollback().await;
        return Err(StoreError::unsupported(
            "the PostgreSQL store cannot commit a transaction another store began",
        ));
    }
    let any: Box<dyn Any> = transaction;
    match any.downcast::<PostgresTransaction>() {
        Ok(ours) => Ok(ours),
        Err(_) => unreachable!("checked to be a PostgresTransaction"),
    }
}

/// What [`Store::recover`]'s queries found.
fn recovered(
    timers: &[PgRow],
    unfinished: &[PgRow],
    steps: &[PgRow],
    outbox: &[PgRow],
) -> Result<Recovery, Decode> {
    let mut recovery = Recovery::default();
    for row in timers {
        recovery.timers.push(active_saga(row)?);
    }
    for row in unfinished {
        recovery
            .unfinished
            .push(SagaId::from(row.try_get::<Uuid, _>("saga_id")?));
    }
    for row in steps {
        recovery.unsent.push(unsent_step(row, "output")?);
    }
    for row in outbox {
        recovery.unsent.push(unsent_entry(row, "envelope")?);
    }
    Ok(recovery)
}

/// The timer of the active saga a row's `saga_id`, `deadline_ns` and `initiated_here` hold.
fn active_saga(row: &PgRow) -> Result<ActiveSaga, Decode> {
    Ok(ActiveSaga {
        saga_id: SagaId::from(row.try_get::<Uuid, _>("saga_id")?),
        deadline: Deadline::at(codec::instant(row.try_get("deadline_ns")?)),
        initiated_here: row.try_get("initiated_here")?,
    })
}

/// The unsent step output a row holds: its `position`, and its event in column `event`.
fn unsent_step(row: &PgRow, event: &str) -> Result<Outgoing, Decode> {
    let position: i32 = row.try_get("position")?;
    let text: String = row.try_get(event)?;
    Ok(Outgoing {
        envelope: Arc::new(codec::envelope_of(&text)?),
        kind: OutgoingKind::Step {
            position: usize::try_from(position)
                .map_err(|_| codec::corrupt(format!("step position {position}")))?,
        },
    })
}

/// The unsent outbox entry a row holds: its `kind`, `reason`, and its event in column
/// `event`.
fn unsent_entry(row: &PgRow, event: &str) -> Result<Outgoing, Decode> {
    let kind: String = row.try_get("kind")?;
    let text: String = row.try_get(event)?;
    Ok(Outgoing {
        envelope: Arc::new(codec::envelope_of(&text)?),
        kind: codec::outbox_kind_of(&kind, row.try_get("reason")?)?,
    })
}

/// What [`sql::CLAIM`] claimed.
fn claimed(rows: &[PgRow]) -> Result<Claimed, Decode> {
    let mut claimed = Claimed::default();
    for row in rows {
        match row.try_get::<&str, _>("what")? {
            "saga" => claimed.timers.push(active_saga(row)?),
            "step" => claimed.unsent.push(unsent_step(row, "event")?),
            _ => claimed.unsent.push(unsent_entry(row, "event")?),
        }
    }
    Ok(claimed)
}

/// The record and inbox flag of [`sql::LOAD`]'s row.
fn loaded(saga: SagaId, row: &PgRow) -> Result<Loaded, Decode> {
    let handled: bool = row.try_get("handled")?;
    let Some(status) = row.try_get::<Option<String>, _>("status")? else {
        return Ok(Loaded {
            record: None,
            handled,
            version: 0,
        });
    };
    let version: i64 = row.try_get("version")?;
    let version = u64::try_from(version)
        .map_err(|_| codec::corrupt(format!("saga {saga} has version {version}")))?;
    let deadline: i64 = row.try_get("deadline_ns")?;
    let abort: Option<String> = row.try_get("abort_event")?;
    let mut record = SagaRecord::from_header(SagaHeader {
        saga_id: saga,
        deadline: Deadline::at(codec::instant(deadline)),
        status: codec::status_of(&status, row.try_get::<Option<&str>, _>("abort_reason")?)?,
        initiated_here: row.try_get("initiated_here")?,
        abort_published: row.try_get("abort_published")?,
        compensation_acknowledged: row.try_get("compensation_acknowledged")?,
        abort: abort
            .as_deref()
            .map(codec::envelope_of)
            .transpose()?
            .map(Box::new),
    });
    let positions: Vec<i32> = row
        .try_get::<Option<Vec<i32>>, _>("positions")?
        .unwrap_or_default();
    if positions.is_empty() {
        return Ok(Loaded {
            record: Some(record),
            handled,
            version,
        });
    }
    let inputs: Vec<Option<Uuid>> = row.try_get("inputs")?;
    let outputs: Vec<String> = row.try_get("outputs")?;
    let withheld: Vec<bool> = row.try_get("withheld")?;
    let published: Vec<bool> = row.try_get("published")?;
    let compensations: Vec<String> = row.try_get("compensations")?;
    let failures: Vec<Option<String>> = row.try_get("failures")?;
    let steps = positions
        .iter()
        .zip(inputs)
        .zip(outputs)
        .zip(withheld)
        .zip(published)
        .zip(compensations)
        .zip(failures);
    for (index, ((((((position, input), output), withheld), published), compensation), failure)) in
        steps.enumerate()
    {
        if usize::try_from(*position).ok() != Some(index) {
            return Err(codec::corrupt(format!(
                "saga {saga} has steps at positions {positions:?}; expected 0 to {}",
                positions.len() - 1
            ))
            .into());
        }
        record.steps.push(StepRecord {
            input: input.map(EventId::from),
            output: Arc::new(codec::envelope_of(&output)?),
            withheld,
            published,
            compensation: codec::compensation_of(&compensation, failure)?,
        });
    }
    Ok(Loaded {
        record: Some(record),
        handled,
        version,
    })
}

/// Why a row could not be read.
enum Decode {
    Sql(sqlx::Error),
    Store(StoreError),
}

impl From<sqlx::Error> for Decode {
    fn from(error: sqlx::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<StoreError> for Decode {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// A database call that failed, with what it was doing.
#[derive(Debug)]
pub(crate) struct Failure {
    what: String,
    source: sqlx::Error,
}

impl Failure {
    pub(crate) fn new(what: impl Into<String>, source: sqlx::Error) -> Self {
        Self {
            what: what.into(),
            source,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, connect::describe(&self.source))
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn failed(what: String, error: sqlx::Error) -> StoreError {
    StoreError::new(Failure::new(what, error))
}

/// A failed commit; a record created twice, or changed from a version it no longer has,
/// is a conflict with another instance, said in choreo's words.
fn commit_failed(what: String, error: sqlx::Error) -> StoreError {
    let database = error.as_database_error();
    let constraint = database.and_then(|database| database.constraint().map(str::to_owned));
    let code = database.and_then(|database| database.code().map(|code| code.into_owned()));
    if code.as_deref() == Some("40001") {
        return StoreError::conflict(Failure::new(
            format!("{what}: another instance changed the saga's record since it was loaded"),
            error,
        ));
    }
    if constraint.as_deref() == Some("choreo_sagas_pkey") {
        return StoreError::conflict(Failure::new(
            format!("{what}: the service already has a record of the saga it creates (another instance created it)"),
            error,
        ));
    }
    let what = match constraint.as_deref() {
        Some("choreo_steps_service_saga_id_fkey") => {
            format!("{what}: a step is added to a saga the service has no record of")
        }
        _ => what,
    };
    failed(what, error)
}

/// What handlers and callers hold across an await must be `Send`.
#[cfg(test)]
#[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
fn futures_are_send(url: &StoreUrl, cx: &choreo_core::Context) {
    fn send<T: Send>(_: T) {}
    send(PostgresStore::open(url));
    send(cx.postgres());
    send::<PostgresGuard>(unimplemented!());
}

/// `committing saga X of `service`` (and how many others).
fn describe_commits(commits: &[Commit]) -> String {
    match commits {
        [] => "committing a transaction".to_owned(),
        [one] => format!("committing saga {} of `{}`", one.saga_id, one.service),
        [first, rest @ ..] => format!(
            "committing saga {} of `{}` and {} more",
            first.saga_id,
            first.service,
            rest.len()
        ),
    }
}

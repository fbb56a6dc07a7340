//! The handling's database transaction, and the handler's way into it.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;
use choreo_core::{
    Context, HandlerError, SagaTransaction, StoreError, StoreTransaction, TransactionGuard,
};
use sqlx::{PgConnection, Postgres};

/// A PostgreSQL transaction the store began for one handling ([`Store::begin`]): a handler's
/// business writes and the handling's saga state commit in it together, or not at all.
///
/// Dropped without being committed, it rolls back (sqlx rolls back when the connection goes
/// back to the pool). Handlers reach it through [`PostgresExt::postgres`].
///
/// [`Store::begin`]: choreo_core::Store::begin
pub struct PostgresTransaction {
    pub(crate) inner: sqlx::Transaction<'static, Postgres>,
}

impl PostgresTransaction {
    /// The connection the transaction runs on: execute business statements on it.
    ///
    /// ```no_run
    /// # async fn write(tx: &mut choreo_postgres::PostgresTransaction) -> Result<(), sqlx::Error> {
    /// sqlx::query("INSERT INTO payments (order_id) VALUES ($1)")
    ///     .bind(7_i64)
    ///     .execute(tx.connection())
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}

impl fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTransaction")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl StoreTransaction for PostgresTransaction {
    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.inner.rollback().await.map_err(|error| {
            StoreError::new(crate::Failure::new("rolling back a transaction", error))
        })
    }
}

/// The handling's transaction, locked for the caller, as a PostgreSQL connection: what
/// [`PostgresExt::postgres`] returns. Drop it before the handler returns (or before
/// [`SagaTransaction::commit`]).
pub struct PostgresGuard {
    guard: TransactionGuard,
}

impl PostgresGuard {
    /// The guard over `guard`, if the transaction is PostgreSQL's; otherwise the name of the
    /// store that began it.
    fn new(mut guard: TransactionGuard) -> Result<Self, &'static str> {
        if guard.downcast_mut::<PostgresTransaction>().is_some() {
            Ok(Self { guard })
        } else {
            Err(guard.store())
        }
    }

    /// The transaction.
    pub fn transaction(&mut self) -> &mut PostgresTransaction {
        match self.guard.downcast_mut::<PostgresTransaction>() {
            Some(transaction) => transaction,
            None => unreachable!("the guard was checked to hold a PostgresTransaction"),
        }
    }

    /// The connection the transaction runs on: execute business statements on it.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.transaction().connection()
    }
}

impl std::ops::Deref for PostgresGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self.guard.downcast_ref::<PostgresTransaction>() {
            Some(transaction) => &transaction.inner,
            None => unreachable!("the guard was checked to hold a PostgresTransaction"),
        }
    }
}

/// `&mut *guard` is the connection: `sqlx::query(..).execute(&mut *cx.postgres().await?)`.
impl std::ops::DerefMut for PostgresGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.connection()
    }
}

impl fmt::Debug for PostgresGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresGuard").finish_non_exhaustive()
    }
}

/// The handling's PostgreSQL transaction, for a step or compensation ([`Context`]) or for a
/// caller starting sagas in its own transaction ([`SagaTransaction`]).
///
/// ```no_run
/// use choreo_core::{Context, HandlerError};
/// use choreo_postgres::PostgresExt;
///
/// async fn reserve(order_id: i64, cx: Context) -> Result<(), HandlerError> {
///     let mut db = cx.postgres().await?;
///     sqlx::query("INSERT INTO reservations (order_id) VALUES ($1)")
///         .bind(order_id)
///         .execute(db.connection())
///         .await?;
///     Ok(()) // committed with the step's journal entry, or rolled back with it
/// }
/// ```
pub trait PostgresExt {
    /// What fails: [`HandlerError`] for a [`Context`], [`StoreError`] for a
    /// [`SagaTransaction`].
    type Error;

    /// The transaction, begun on first use. A service whose store is not PostgreSQL gets a
    /// permanent error naming its store; a failure to begin is transient.
    fn postgres(&self) -> impl Future<Output = Result<PostgresGuard, Self::Error>> + Send;
}

impl PostgresExt for Context {
    type Error = HandlerError;

    async fn postgres(&self) -> Result<PostgresGuard, HandlerError> {
        let guard = self.transaction().await?;
        PostgresGuard::new(guard).map_err(|store| HandlerError::permanent(not_postgres(store)))
    }
}

impl PostgresExt for SagaTransaction {
    type Error = StoreError;

    async fn postgres(&self) -> Result<PostgresGuard, StoreError> {
        let guard = self.transaction().await?;
        PostgresGuard::new(guard).map_err(|store| StoreError::unsupported(not_postgres(store)))
    }
}

fn not_postgres(store: &str) -> String {
    format!(
        "the service's store is `{store}`, not PostgreSQL: `postgres()` needs a store opened \
         from a `postgres://` URL"
    )
}

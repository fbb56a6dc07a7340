//! Starting sagas inside the caller's own database transaction (the bus outbox): the starts
//! are recorded with the caller's writes and published if, and only if, they commit.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::handling::Handling;
use super::runtime::Runtime;
use super::{SagaStart, StartError};
use crate::deadline::Deadline;
use crate::event::Event;
use crate::ids::SagaId;
use crate::store::{StoreError, TransactionGuard, TransactionSlot};

/// A transaction on a service's store, from [`RunningService::begin`](super::RunningService::begin):
/// the caller writes its own data in it through the store's API (e.g. `tx.sqlite(..)` with
/// the `sqlite` feature) and starts sagas in it; [`commit`](Self::commit) commits both, then
/// publishes the starts. Dropped or rolled back, nothing of it happens. A start committed but
/// not yet published (a crash, the broker down) is published once the service can, also
/// after a restart, and always under the id `start_saga` returned.
///
/// ```text
/// let mut tx = orders.begin();
/// tx.sqlite(|db| db.execute("INSERT INTO orders (id) VALUES (?1)", [7])).await?;
/// let saga = tx.start_saga(OrderPlaced { order_id: 7 })?;
/// tx.commit().await?; // the order row and its saga, or neither
/// ```
/// (`choreo::SagaTransaction` has a complete example.)
pub struct SagaTransaction {
    runtime: Arc<Runtime>,
    transaction: Arc<TransactionSlot>,
    /// In a mutex only so that a `&SagaTransaction` is `Send`: every use has `&mut self`.
    starts: Mutex<Vec<Handling>>,
}

impl SagaTransaction {
    pub(super) fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            transaction: runtime.transaction_slot(),
            runtime,
            starts: Mutex::default(),
        }
    }

    /// The store's transaction, begun on first use, for the caller's own writes. Store
    /// crates give it their own API. A store without transactions (`memory://`) says so.
    pub async fn transaction(&self) -> Result<TransactionGuard, StoreError> {
        self.transaction.guard().await
    }

    /// Starts a saga with `event` and the saga's default timeout, once this commits.
    pub fn start_saga<E: Event>(&mut self, event: E) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new())
    }

    /// Starts a saga with `event` that must finish within `timeout` from now, by the
    /// service's clock, once this commits.
    pub fn start_saga_within<E: Event>(
        &mut self,
        event: E,
        timeout: std::time::Duration,
    ) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new().within(timeout))
    }

    /// Starts a saga with `event` that must finish by `deadline`, once this commits.
    pub fn start_saga_until<E: Event>(
        &mut self,
        event: E,
        deadline: Deadline,
    ) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new().until(deadline))
    }

    /// Starts a saga with `event`, its deadline and saga data as `how` says, once this
    /// commits.
    pub fn start_saga_with<E: Event>(
        &mut self,
        event: E,
        how: SagaStart,
    ) -> Result<SagaId, StartError> {
        let (saga, handling) = self.runtime.start_as(event, how)?;
        starts(&mut self.starts).push(handling);
        Ok(saga)
    }

    /// Commits the caller's writes and the sagas started, as one store transaction; then
    /// publishes the starts.
    ///
    /// A guard from [`transaction`](Self::transaction) still held is an error: drop it first.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let service = self.runtime.name().to_owned();
        let mut starts = std::mem::take(starts(&mut self.starts));
        let now = self.runtime.now();
        let commits = starts
            .iter_mut()
            .filter_map(|start| start.prepare(&service, now))
            .map(|(commit, _)| commit)
            .collect();
        let transaction = self.transaction.take()?;
        // On a task of its own: a caller that stops waiting must not leave the starts
        // committed but neither published nor timed.
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move {
            runtime.store().commit(commits, transaction).await?;
            for mut start in starts {
                runtime.started(&start);
                runtime.publish_started(&mut start).await;
            }
            Ok(())
        })
        .await
        .map_err(StoreError::new)?
    }

    /// Rolls back the caller's writes; no saga starts.
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.transaction.take()? {
            Some(transaction) => transaction.rollback().await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for SagaTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaTransaction")
            .field("service", &self.runtime.name())
            .field(
                "starts",
                &self.starts.lock().map_or(0, |starts| starts.len()),
            )
            .finish_non_exhaustive()
    }
}

fn starts(starts: &mut Mutex<Vec<Handling>>) -> &mut Vec<Handling> {
    starts.get_mut().unwrap_or_else(PoisonError::into_inner)
}

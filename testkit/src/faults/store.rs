//! A store whose commits fail or take long, and which goes away for a while.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use choreo_core::store::{
    Claim, Claimed, Commit, Loaded, Purged, Recovery, Sent, StoreError, StoreTransaction,
};
use choreo_core::{EventId, SagaId, Store};

use super::Faults;

/// `inner` with the store faults of a [`Faults`]; made by [`Faults::store`].
///
/// A failed commit applies nothing, as a database that refused it; during an outage every
/// call fails but [`Store::hold`] (a service that already holds its store keeps it).
/// Transactions are `inner`'s own, so handlers write through them as usual.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

impl FaultyStore {
    /// `inner` with `faults`.
    pub fn new(inner: Arc<dyn Store>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    /// Fails the call if the store is down.
    fn reachable(&self) -> Result<(), StoreError> {
        if self.faults.store_down() {
            return Err(self.failed());
        }
        Ok(())
    }

    fn failed(&self) -> StoreError {
        self.faults
            .counters
            .failed_store_calls
            .fetch_add(1, Ordering::Relaxed);
        StoreError::new("the store is unreachable (injected fault)")
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn is_durable(&self) -> bool {
        self.inner.is_durable()
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    async fn load(
        &self,
        service: &str,
        saga: SagaId,
        event: Option<EventId>,
    ) -> Result<Loaded, StoreError> {
        self.reachable()?;
        let mut loaded = self.inner.load(service, saga, event).await?;
        if self.faults.rates.forget_handled {
            loaded.handled = false;
        }
        Ok(loaded)
    }

    async fn begin(&self) -> Result<Box<dyn StoreTransaction>, StoreError> {
        self.reachable()?;
        self.inner.begin().await
    }

    async fn commit(
        &self,
        commits: Vec<Commit>,
        transaction: Option<Box<dyn StoreTransaction>>,
    ) -> Result<(), StoreError> {
        if let Some(pause) = self.faults.pause(self.faults.rates.slow_commit) {
            tokio::time::sleep(pause).await;
        }
        if self.faults.store_down() || self.faults.hit(self.faults.rates.fail_commit) {
            // Dropping the transaction rolls back the handler's own writes.
            drop(transaction);
            return Err(self.failed());
        }
        self.inner.commit(commits, transaction).await
    }

    async fn mark_sent(&self, service: &str, sent: &[Sent]) -> Result<(), StoreError> {
        self.reachable()?;
        self.inner.mark_sent(service, sent).await
    }

    async fn hold(&self, service: &str) -> Result<Box<dyn Any + Send + Sync>, StoreError> {
        self.inner.hold(service).await
    }

    async fn recover(&self, service: &str) -> Result<Recovery, StoreError> {
        self.reachable()?;
        self.inner.recover(service).await
    }

    async fn claim(&self, service: &str, claim: &Claim) -> Result<Claimed, StoreError> {
        self.reachable()?;
        self.inner.claim(service, claim).await
    }

    async fn purge(&self, service: &str, before: SystemTime) -> Result<Purged, StoreError> {
        self.reachable()?;
        self.inner.purge(service, before).await
    }
}

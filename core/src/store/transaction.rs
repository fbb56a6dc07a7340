//! The database transaction of one handling, which a handler may write its business data in.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Store, StoreError};

/// A transaction a store began for one handling ([`Store::begin`]). The handler writes in
/// it through the store's own API (e.g. `choreo::sqlite::SqliteContext`); the runtime then
/// commits the handling's [`Commit`](super::Commit) in it. Dropped without being committed,
/// it rolls back.
#[async_trait]
pub trait StoreTransaction: Any + Send {
    /// Rolls back everything written in it.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

type Shared = Arc<Mutex<Option<Box<dyn StoreTransaction>>>>;

/// Where a handling keeps its transaction: begun when the handler first asks for it, taken
/// by the runtime once the handler returned.
pub(crate) struct TransactionSlot {
    store: Arc<dyn Store>,
    transaction: Shared,
}

impl TransactionSlot {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            transaction: Shared::default(),
        })
    }

    /// The transaction, begun now if the handler had none yet.
    pub(crate) async fn guard(&self) -> Result<TransactionGuard, StoreError> {
        let Ok(mut guard) = Arc::clone(&self.transaction).try_lock_owned() else {
            return Err(StoreError::unsupported(
                "the handling's transaction is already in use: hold one TransactionGuard at a time",
            ));
        };
        if guard.is_none() {
            *guard = Some(self.store.begin().await?);
        }
        Ok(TransactionGuard {
            guard,
            store: self.store.name(),
        })
    }

    /// The transaction, if the handler began one. A guard still held (it outlived its
    /// handler, or a caller commits with it in scope) is an error, rather than a wait for
    /// something that may never come.
    pub(crate) fn take(&self) -> Result<Option<Box<dyn StoreTransaction>>, StoreError> {
        match self.transaction.try_lock() {
            Ok(mut transaction) => Ok(transaction.take()),
            Err(_) => Err(StoreError::unsupported(
                "a TransactionGuard is still held: drop it before the handler returns, or before committing",
            )),
        }
    }
}

/// The handling's open transaction, locked for the handler. Store crates turn it into their
/// own connection type with [`downcast_mut`](Self::downcast_mut). Drop it before the handler
/// returns.
pub struct TransactionGuard {
    guard: OwnedMutexGuard<Option<Box<dyn StoreTransaction>>>,
    store: &'static str,
}

impl TransactionGuard {
    /// The name of the store that began it (`sqlite`, `postgres`, ...).
    pub fn store(&self) -> &'static str {
        self.store
    }

    /// The transaction as the store's own type, if it is a `T`.
    pub fn downcast_ref<T: StoreTransaction>(&self) -> Option<&T> {
        let transaction: &dyn StoreTransaction = self.guard.as_deref()?;
        (transaction as &dyn Any).downcast_ref::<T>()
    }

    /// The transaction as the store's own type, if it is a `T`, to write in.
    pub fn downcast_mut<T: StoreTransaction>(&mut self) -> Option<&mut T> {
        let transaction: &mut dyn StoreTransaction = self.guard.as_deref_mut()?;
        (transaction as &mut dyn Any).downcast_mut::<T>()
    }
}

impl fmt::Debug for TransactionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionGuard")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

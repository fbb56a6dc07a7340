//! The store conformance suite on the in-memory store.

use std::sync::Arc;

use choreo::{MemoryStore, Store, StoreTransaction};
use choreo_testkit::store_conformance::StoreSubject;

/// One store for every check of a test, as a process keeps it.
struct Memory(Arc<MemoryStore>);

#[choreo::async_trait]
impl StoreSubject for Memory {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::clone(&self.0) as Arc<dyn Store>
    }

    async fn write(&self, _transaction: &mut Box<dyn StoreTransaction>, _key: &str) {
        unreachable!("the memory store has no transactions")
    }

    async fn written(&self, _store: &Arc<dyn Store>, _key: &str) -> bool {
        unreachable!("the memory store has no transactions")
    }
}

async fn memory() -> Memory {
    Memory(Arc::new(MemoryStore::shared()))
}

choreo_testkit::store_conformance_tests!(memory);
choreo_testkit::shared_store_conformance_tests!(memory);

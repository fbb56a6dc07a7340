//! The transport conformance suite (docs/testing.md) on the in-memory transport.

use std::sync::Arc;

use choreo::memory::MemoryTransport;
use choreo::{RawMessage, Transport};
use choreo_testkit::conformance::Subject;

struct Memory(MemoryTransport);

#[choreo::async_trait]
impl Subject for Memory {
    async fn connect(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }

    async fn publish_raw(&self, topic: &str, key: Option<&str>, message: RawMessage) {
        self.0.publish_raw(topic, key, message).unwrap();
    }
}

async fn memory() -> Memory {
    Memory(MemoryTransport::new())
}

choreo_testkit::conformance_tests!(memory);

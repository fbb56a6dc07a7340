//! The inbox: ids of events a service already handled, so a redelivery has no second effect.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::ids::EventId;
use crate::journal::StoreError;

/// Dedup of handled event ids (the idempotent-consumer pattern).
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Whether `event` was handled.
    async fn contains(&self, event: EventId) -> Result<bool, StoreError>;
    /// Records `event` as handled.
    async fn insert(&self, event: EventId) -> Result<(), StoreError>;
}

/// An inbox in process memory: lost on restart; the default.
#[derive(Debug, Default)]
pub struct MemoryInbox {
    handled: Mutex<HashSet<EventId>>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many event ids it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<EventId>> {
        self.handled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn contains(&self, event: EventId) -> Result<bool, StoreError> {
        Ok(self.lock().contains(&event))
    }

    async fn insert(&self, event: EventId) -> Result<(), StoreError> {
        self.lock().insert(event);
        Ok(())
    }
}

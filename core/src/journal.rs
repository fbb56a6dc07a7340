//! The journal: what one service did for each saga, so it can undo it (DESIGN §3, §4.3).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::deadline::Deadline;
use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::ids::{EventId, SagaId};

/// Where a saga stands, as one service saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SagaStatus {
    /// Steps may still run.
    Active,
    /// A terminal event arrived.
    Completed,
    /// An abort arrived; steps are compensated and later step events are skipped.
    Aborted {
        /// Why the saga aborted.
        reason: AbortReason,
    },
}

/// Why a saga aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortReason {
    /// A step rejected (business failure).
    Rejected,
    /// The deadline passed.
    TimedOut,
    /// A step kept failing and was dead-lettered.
    DeadLettered,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rejected => "rejected",
            Self::TimedOut => "timed out",
            Self::DeadLettered => "dead-lettered",
        })
    }
}

/// Whether a completed step has been undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CompensationState {
    /// Not undone (yet).
    Pending,
    /// Undone.
    Compensated,
    /// The compensation kept failing and was dead-lettered.
    Failed {
        /// The last error.
        reason: String,
    },
    /// This service registered no compensation for the step's event.
    NotRequired,
}

/// A step this service completed for a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The event the step handled; `None` for the saga start.
    pub input: Option<EventId>,
    /// The event the step emitted: what its compensation receives.
    pub output: Envelope,
    /// Whether the output was withheld because the deadline passed while the step ran.
    pub withheld: bool,
    /// Whether it was undone.
    pub compensation: CompensationState,
}

/// One service's record of one saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga.
    pub saga_id: SagaId,
    /// Its deadline.
    pub deadline: Deadline,
    /// Where it stands.
    #[serde(flatten)]
    pub status: SagaStatus,
    /// Whether this service started it.
    pub initiated_here: bool,
    /// Steps this service completed, oldest first.
    pub steps: Vec<StepRecord>,
    /// Whether this service already published an abort for it.
    pub abort_published: bool,
    /// Whether this service acknowledged its compensation.
    pub compensation_acknowledged: bool,
}

impl SagaRecord {
    /// A fresh record of an active saga.
    pub fn new(saga_id: SagaId, deadline: Deadline) -> Self {
        Self {
            saga_id,
            deadline,
            status: SagaStatus::Active,
            initiated_here: false,
            steps: Vec::new(),
            abort_published: false,
            compensation_acknowledged: false,
        }
    }

    /// Whether the saga is aborted here.
    pub fn is_aborted(&self) -> bool {
        matches!(self.status, SagaStatus::Aborted { .. })
    }

    /// The step that handled event `input`, if this service already ran it.
    pub fn step_for(&self, input: EventId) -> Option<&StepRecord> {
        self.steps.iter().find(|step| step.input == Some(input))
    }
}

/// A journal store failure.
#[derive(Debug, thiserror::Error)]
#[error("store failed: {0}")]
pub struct StoreError(#[source] pub BoxError);

/// Per-service saga state. The runtime serialises access per saga, so implementations need
/// only make each call atomic.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// The record of `saga`, if any.
    async fn load(&self, saga: SagaId) -> Result<Option<SagaRecord>, StoreError>;
    /// Stores `record`, replacing the previous one.
    async fn save(&self, record: &SagaRecord) -> Result<(), StoreError>;
}

/// A journal in process memory: lost on restart; the default.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    records: Mutex<HashMap<SagaId, SagaRecord>>,
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every record, for tests and inspection.
    pub fn records(&self) -> Vec<SagaRecord> {
        let records = self.lock();
        records.values().cloned().collect()
    }

    /// A copy of the record of `saga`, for tests and inspection.
    pub fn record(&self, saga: SagaId) -> Option<SagaRecord> {
        self.lock().get(&saga).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SagaId, SagaRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn load(&self, saga: SagaId) -> Result<Option<SagaRecord>, StoreError> {
        Ok(self.record(saga))
    }

    async fn save(&self, record: &SagaRecord) -> Result<(), StoreError> {
        self.lock().insert(record.saga_id, record.clone());
        Ok(())
    }
}

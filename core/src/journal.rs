//! The journal: what one service did for each saga, so it can undo it (docs/concepts.md,
//! rule 3). A [`Store`](crate::Store) keeps it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::deadline::Deadline;
use crate::envelope::Envelope;
use crate::ids::{EventId, SagaId};

/// Where a saga stands, as one service saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum SagaStatus {
    /// Steps may still run.
    Active,
    /// A terminal event arrived, or this service emitted one.
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

/// A step this service completed for a saga, or an event it received and keeps
/// ([`is_received`](Self::is_received)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The event the step handled; `None` for the saga start; a received event's own id.
    pub input: Option<EventId>,
    /// The event the step emitted: what its compensation receives; or the received event.
    /// Shared, since the record is copied on every load and the event never changes.
    pub output: Arc<Envelope>,
    /// Whether the output was withheld because the deadline passed while the step ran;
    /// always, for a received event, which is never this service's to publish.
    pub withheld: bool,
    /// Whether the output was published (the journal is its outbox until then).
    pub published: bool,
    /// Whether it was undone.
    pub compensation: CompensationState,
}

impl StepRecord {
    /// The record of an event this service received and keeps: an event a join waits with
    /// (docs/concepts.md, rule 10), or one whose step did not run because the deadline
    /// passed, kept for the saga data and trace of the abort. `output` is that event itself
    /// (so `input` is its id), never published by this service, with nothing to compensate
    /// here.
    pub fn received(event: Envelope) -> Self {
        Self {
            input: Some(event.id),
            output: Arc::new(event),
            withheld: true,
            published: false,
            compensation: CompensationState::NotRequired,
        }
    }

    /// Whether this records an event this service received rather than a step's output.
    pub fn is_received(&self) -> bool {
        self.input == Some(self.output.id)
    }
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
    /// Steps this service completed, oldest first, with the events it keeps.
    pub steps: Vec<StepRecord>,
    /// Whether this service recorded an abort of its own for it (sent through its outbox).
    pub abort_published: bool,
    /// Whether this service acknowledged its compensation.
    pub compensation_acknowledged: bool,
    /// The abort this service compensates for, once one arrived: what a restart resumes
    /// unfinished compensations from.
    pub abort: Option<Box<Envelope>>,
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
            abort: None,
        }
    }

    /// Whether the saga is aborted here.
    pub fn is_aborted(&self) -> bool {
        matches!(self.status, SagaStatus::Aborted { .. })
    }

    /// Whether the saga is finished here: completed, or aborted and acknowledged.
    pub fn is_finished(&self) -> bool {
        match self.status {
            SagaStatus::Active => false,
            SagaStatus::Completed => true,
            SagaStatus::Aborted { .. } => self.compensation_acknowledged,
        }
    }

    /// The saga data, as the events this service recorded for the saga carry it.
    pub fn saga_data(&self) -> crate::SagaData {
        self.steps
            .first()
            .map(|step| step.output.saga_data.clone())
            .unwrap_or_default()
    }

    /// The trace context of the latest event this service recorded for the saga.
    pub fn latest_trace(&self) -> crate::TraceContext {
        self.steps
            .last()
            .map(|step| step.output.trace.clone())
            .unwrap_or_default()
    }
}

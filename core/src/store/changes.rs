//! What one handling changed in a saga's record, so stores write only that.

use crate::deadline::Deadline;
use crate::envelope::Envelope;
use crate::ids::SagaId;
use crate::journal::{CompensationState, SagaRecord, SagaStatus};
use crate::store::JournalChange;

/// A saga record's own fields: everything but its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaHeader {
    /// The saga.
    pub saga_id: SagaId,
    /// Its deadline.
    pub deadline: Deadline,
    /// Where it stands.
    pub status: SagaStatus,
    /// Whether this service started it.
    pub initiated_here: bool,
    /// Whether this service recorded an abort of its own for it.
    pub abort_published: bool,
    /// Whether this service acknowledged its compensation.
    pub compensation_acknowledged: bool,
    /// The abort this service compensates for, once one arrived.
    pub abort: Option<Box<Envelope>>,
}

impl SagaRecord {
    /// The record's own fields.
    pub fn header(&self) -> SagaHeader {
        SagaHeader {
            saga_id: self.saga_id,
            deadline: self.deadline,
            status: self.status.clone(),
            initiated_here: self.initiated_here,
            abort_published: self.abort_published,
            compensation_acknowledged: self.compensation_acknowledged,
            abort: self.abort.clone(),
        }
    }

    /// A record with `header`'s fields and no steps, for stores rebuilding one.
    pub fn from_header(header: SagaHeader) -> Self {
        Self {
            saga_id: header.saga_id,
            deadline: header.deadline,
            status: header.status,
            initiated_here: header.initiated_here,
            steps: Vec::new(),
            abort_published: header.abort_published,
            compensation_acknowledged: header.compensation_acknowledged,
            abort: header.abort,
        }
    }

    fn header_differs(&self, header: &SagaHeader) -> bool {
        self.deadline != header.deadline
            || self.status != header.status
            || self.initiated_here != header.initiated_here
            || self.abort_published != header.abort_published
            || self.compensation_acknowledged != header.compensation_acknowledged
            || self.abort.as_ref().map(|abort| abort.id) != header.abort.as_ref().map(|a| a.id)
    }
}

/// What a store holds of a record, as the runtime last loaded or committed it: enough to
/// tell what changed since.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    header: SagaHeader,
    compensations: Vec<CompensationState>,
}

impl Snapshot {
    /// The stored state of `record`.
    pub fn of(record: &SagaRecord) -> Self {
        Self {
            header: record.header(),
            compensations: record
                .steps
                .iter()
                .map(|step| step.compensation.clone())
                .collect(),
        }
    }

    /// The changes that turn what `stored` holds (nothing, if `None`) into `record`. Steps
    /// are only ever appended, and of a step only its compensation changes.
    pub fn changes(stored: Option<&Self>, record: &SagaRecord) -> Vec<JournalChange> {
        let mut changes = Vec::new();
        let known = match stored {
            None => {
                changes.push(JournalChange::Created(record.header()));
                0
            }
            Some(stored) => {
                if record.header_differs(&stored.header) {
                    changes.push(JournalChange::Updated(record.header()));
                }
                for (position, (before, step)) in
                    stored.compensations.iter().zip(&record.steps).enumerate()
                {
                    if *before != step.compensation {
                        changes.push(JournalChange::CompensationChanged {
                            position,
                            state: step.compensation.clone(),
                        });
                    }
                }
                stored.compensations.len()
            }
        };
        for (position, step) in record.steps.iter().enumerate().skip(known) {
            changes.push(JournalChange::StepAdded {
                position,
                step: step.clone(),
            });
        }
        changes
    }
}

impl SagaRecord {
    /// Applies `change`, as a store that keeps whole records does.
    pub fn apply(&mut self, change: &JournalChange) {
        self.apply_owned(change.clone());
    }

    /// Applies `change`, taking what it holds rather than copying it.
    pub fn apply_owned(&mut self, change: JournalChange) {
        match change {
            JournalChange::Created(header) | JournalChange::Updated(header) => {
                let steps = std::mem::take(&mut self.steps);
                *self = Self::from_header(header);
                self.steps = steps;
            }
            JournalChange::StepAdded { position, step } => {
                if position == self.steps.len() {
                    // A record keeps a handful of steps for as long as its saga is open: room
                    // for exactly one more, not the four a growing vector would reserve.
                    self.steps.reserve_exact(1);
                    self.steps.push(step);
                } else if let Some(slot) = self.steps.get_mut(position) {
                    *slot = step;
                }
            }
            JournalChange::CompensationChanged { position, state } => {
                if let Some(step) = self.steps.get_mut(position) {
                    step.compensation = state;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::envelope::SagaKind;
    use crate::ids::EventId;
    use crate::journal::{AbortReason, StepRecord};
    use crate::trace::TraceContext;

    fn envelope(saga: SagaId, event_type: &str) -> Envelope {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Envelope {
            id: EventId::new(),
            source: "payments".into(),
            event_type: event_type.into(),
            time: now,
            saga_id: saga,
            causation_id: None,
            joined_causes: Vec::new(),
            deadline: Deadline::after(now, Duration::from_secs(30)),
            kind: SagaKind::Step,
            trace: TraceContext::default(),
            data: serde_json::value::to_raw_value(&1).unwrap(),
            saga_data: Default::default(),
        }
    }

    fn step(saga: SagaId) -> StepRecord {
        StepRecord {
            input: Some(EventId::new()),
            output: Arc::new(envelope(saga, "payments.CreditReserved.v1")),
            withheld: false,
            published: false,
            compensation: CompensationState::Pending,
        }
    }

    #[test]
    fn a_new_record_is_created_with_its_steps() {
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, envelope(saga, "x").deadline);
        record.steps.push(step(saga));
        let changes = Snapshot::changes(None, &record);
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0], JournalChange::Created(record.header()));
        assert!(matches!(
            &changes[1],
            JournalChange::StepAdded { position: 0, .. }
        ));
    }

    #[test]
    fn only_what_changed_is_named_and_applying_it_gives_the_record() {
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, envelope(saga, "x").deadline);
        record.steps.push(step(saga));
        record.steps.push(step(saga));
        let stored = Snapshot::of(&record);
        let mut kept = record.clone();
        assert!(Snapshot::changes(Some(&stored), &record).is_empty());

        record.status = SagaStatus::Aborted {
            reason: AbortReason::Rejected,
        };
        record.abort = Some(Box::new(envelope(saga, "choreo.SagaAborted.v1")));
        record.steps[1].compensation = CompensationState::Compensated;
        record.steps.push(step(saga));
        let changes = Snapshot::changes(Some(&stored), &record);
        assert_eq!(
            changes[..2],
            [
                JournalChange::Updated(record.header()),
                JournalChange::CompensationChanged {
                    position: 1,
                    state: CompensationState::Compensated
                },
            ]
        );
        assert!(matches!(
            &changes[2],
            JournalChange::StepAdded { position: 2, .. }
        ));
        assert_eq!(changes.len(), 3);
        for change in &changes {
            kept.apply(change);
        }
        assert_eq!(kept, record);
    }

    #[test]
    fn a_rebuilt_record_holds_room_for_its_steps_only() {
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, envelope(saga, "x").deadline);
        record.steps.push(step(saga));
        let mut rebuilt = SagaRecord::new(saga, record.deadline);
        for change in Snapshot::changes(None, &record) {
            rebuilt.apply_owned(change);
        }
        assert_eq!(rebuilt, record);
        assert_eq!(rebuilt.steps.capacity(), 1);
    }
}

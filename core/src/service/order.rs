//! Rule 5 with the reverse compensation order: a participant keeps the events of the saga
//! that descend from its steps and the acknowledgements of the others, and compensates only
//! once every participant whose events descend from its newest step has acknowledged.

use std::collections::{BTreeSet, HashSet};

use tracing::{debug, info};

use super::handling::Handling;
use super::runtime::{Infrastructure, Runtime};
use super::Definition;
use crate::envelope::{Envelope, SagaKind};
use crate::ids::EventId;
use crate::journal::{SagaRecord, StepRecord};
use crate::saga::CompensationOrder;

impl Definition {
    /// Whether participants compensate newest step first across the saga.
    pub(super) fn in_reverse(&self) -> bool {
        self.saga.order_of_compensation() == CompensationOrder::Reverse
    }
}

impl Runtime {
    /// Whether participants compensate newest step first across the saga.
    pub(super) fn in_reverse(&self) -> bool {
        self.definition().in_reverse()
    }

    /// Under the reverse order, after the rules ran on `envelope`: keeps it when it is
    /// another service's event descending from this service's work and nothing of it was
    /// recorded (no step of this service handles it, or the step rejected, failed, emitted
    /// nothing or was skipped), or when it acknowledges the abort; an acknowledgement lets
    /// the compensation go on. Kept until this service acknowledged the abort itself.
    pub(super) async fn keep_for_the_order(
        &self,
        envelope: &Envelope,
        handling: &mut Handling,
    ) -> Result<(), Infrastructure> {
        let Some(record) = handling.record_mut() else {
            // This service did nothing in the saga: nothing of it to order.
            return Ok(());
        };
        if record.compensation_acknowledged || envelope.source == self.name() {
            return Ok(());
        }
        let kept = record
            .steps
            .iter()
            .any(|step| step.input == Some(envelope.id) || step.output.id == envelope.id);
        match envelope.kind {
            SagaKind::Compensated => {
                // Not marked handled: the row makes a redelivery harmless, and a
                // redelivery after a failed compensation must try it again.
                if !kept {
                    record.steps.push(StepRecord::received(envelope.clone()));
                }
                if record.is_aborted() {
                    self.compensate_all(handling).await?;
                }
            }
            SagaKind::Start | SagaKind::Step | SagaKind::Complete => {
                if !kept && descends(record, envelope) {
                    debug!(service = %self.name(), saga_id = %envelope.saga_id, event_type = %envelope.event_type, source = %envelope.source, "kept for the compensation order");
                    record.steps.push(StepRecord::received(envelope.clone()));
                    handling.mark_handled(envelope);
                }
            }
            SagaKind::Abort => {}
        }
        Ok(())
    }

    /// Under the reverse order, whether the compensation must wait; says for whom.
    pub(super) fn compensation_waits(&self, record: &SagaRecord) -> bool {
        if !self.in_reverse() {
            return false;
        }
        let waiting = waits_for(self.name(), record);
        if waiting.is_empty() {
            return false;
        }
        info!(service = %self.name(), saga_id = %record.saga_id, waiting_for = ?waiting, "compensation waits: later steps of the saga are not undone yet");
        true
    }
}

/// Whether `event` descends, by causation, from this service's steps or from the events it
/// kept as their descendants.
fn descends(record: &SagaRecord, event: &Envelope) -> bool {
    let ours: HashSet<EventId> = record
        .steps
        .iter()
        .filter(|step| step.output.kind != SagaKind::Compensated)
        .map(|step| step.output.id)
        .collect();
    caused_by_any(event, &ours)
}

/// The participants whose acknowledgement this service's compensation waits for: those that
/// emitted an event descending from its newest step and have not acknowledged.
fn waits_for(service: &str, record: &SagaRecord) -> BTreeSet<String> {
    // The newest step whose event others could have seen: a withheld one was never sent.
    let Some(newest) = record
        .steps
        .iter()
        .rposition(|step| !step.is_received() && !step.withheld)
    else {
        return BTreeSet::new();
    };
    let mut descendants = HashSet::from([record.steps[newest].output.id]);
    let mut emitters = BTreeSet::new();
    let mut acknowledged = HashSet::new();
    for step in record.steps.iter().filter(|step| step.is_received()) {
        let event = &step.output;
        if event.kind == SagaKind::Compensated {
            acknowledged.insert(event.source.as_str());
        } else if event.source != service && caused_by_any(event, &descendants) {
            descendants.insert(event.id);
            emitters.insert(event.source.clone());
        }
    }
    emitters.retain(|emitter| !acknowledged.contains(emitter.as_str()));
    emitters
}

/// Whether `event` was caused by one of `causes` (a join's output by any of its parts).
fn caused_by_any(event: &Envelope, causes: &HashSet<EventId>) -> bool {
    event
        .causation_id
        .iter()
        .chain(&event.joined_causes)
        .any(|cause| causes.contains(cause))
}

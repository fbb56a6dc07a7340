//! Rule 7: a terminal event completes the saga here and disarms its timer: where it is
//! received, and where it is emitted, in the commit that records it.

use super::handling::Handling;
use super::runtime::Runtime;
use crate::envelope::Envelope;
use crate::journal::SagaStatus;

impl Runtime {
    pub(super) fn on_complete(&self, envelope: &Envelope, handling: &mut Handling) {
        handling.record_for(envelope);
        if self.complete(handling) {
            handling.mark_handled(envelope);
        }
    }

    /// Marks the handling's saga completed, and disarms its timer, unless it ended before or
    /// this service published an abort for it (whose return aborts it: rule 7, an abort wins);
    /// whether it did.
    pub(super) fn complete(&self, handling: &mut Handling) -> bool {
        let Some(record) = handling.record_mut() else {
            return false;
        };
        if record.status != SagaStatus::Active || record.abort_published {
            return false;
        }
        record.status = SagaStatus::Completed;
        self.timers.cancel(record.saga_id);
        handling.ended(None);
        true
    }
}

//! Rule 7: a terminal event completes the saga here and disarms its timer.

use super::handling::Handling;
use super::runtime::Runtime;
use crate::envelope::Envelope;
use crate::journal::SagaStatus;

impl Runtime {
    pub(super) fn on_complete(&self, envelope: &Envelope, handling: &mut Handling) {
        let record = handling.record_for(envelope);
        if record.status == SagaStatus::Active {
            record.status = SagaStatus::Completed;
            self.timers.cancel(record.saga_id);
            handling.mark_handled(envelope);
            handling.ended(None);
        }
    }
}

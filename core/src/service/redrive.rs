//! An operator's redrive (`choreo.RedriveRequested.v1`): the service it names handles a
//! dead-lettered event of the saga once more, as if the broker delivered it again, with
//! every rule in force: an event handled already, or one of an ended saga, is not acted on.

use tracing::info;

use super::runtime::{Infrastructure, Runtime, Settle};
use crate::control::RedriveRequested;
use crate::envelope::Envelope;
use crate::ids::EventId;
use crate::journal::SagaStatus;

impl Runtime {
    /// Handles `request`, addressed to this service, in its saga's turn. A request whose
    /// event does not decode, or belongs to another saga, is dead-lettered with the reason.
    pub(super) async fn on_redrive(&self, request: &Envelope) -> Result<Settle, Infrastructure> {
        let redrive: RedriveRequested = match serde_json::from_str(request.data.get()) {
            Ok(redrive) => redrive,
            Err(error) => {
                return Ok(Settle::DeadLetter(format!(
                    "invalid redrive request: {error}"
                )))
            }
        };
        let event = match Envelope::from_json(redrive.event.get().as_bytes()) {
            Ok(event) => event,
            Err(error) => {
                return Ok(Settle::DeadLetter(format!(
                    "the event of the redrive request is not a valid event: {error}"
                )))
            }
        };
        if event.saga_id != request.saga_id {
            return Ok(Settle::DeadLetter(format!(
                "the event of the redrive request belongs to saga {}, not to the request's saga {}",
                event.saga_id, request.saga_id
            )));
        }
        let not_acted_on = |why: &str| {
            info!(
                service = %self.name(), saga_id = %event.saga_id, event_id = %event.id,
                event_type = %event.event_type, requested_by = %redrive.requested_by,
                "redrive not acted on: {why}"
            );
            Ok(Settle::Ack)
        };
        if !self.concerns(&event) {
            return not_acted_on("this service does not handle events of its type");
        }
        let loaded = self
            .store()
            .load(self.name(), event.saga_id, Some(event.id))
            .await?;
        if loaded.handled {
            return not_acted_on("this service handled the event already");
        }
        match loaded.record.as_ref().map(|record| &record.status) {
            Some(SagaStatus::Completed) => return not_acted_on("the saga completed"),
            Some(SagaStatus::Aborted { reason }) => {
                return not_acted_on(&format!("the saga was aborted ({reason})"))
            }
            Some(SagaStatus::Active) | None => {}
        }
        info!(
            service = %self.name(), saga_id = %event.saga_id, event_id = %event.id,
            event_type = %event.event_type, requested_by = %redrive.requested_by,
            "redriving a dead-lettered event"
        );
        REDRIVE.scope(request.id, self.handle_event(&event)).await
    }
}

tokio::task_local! {
    /// While a redriven event is handled: the request that redrove it.
    static REDRIVE: EventId;
}

/// `reason`, for a dead letter of an event handled again on a redrive request, naming the
/// request: a dead letter that comes back after a redrive is told apart from the first
/// (the monitor shows the saga held again, rather than redriven).
pub(super) fn naming_the_redrive(reason: String) -> String {
    match REDRIVE.try_with(|request| *request) {
        Ok(request) => format!("{reason} (again, after redrive request {request})"),
        Err(_) => reason,
    }
}

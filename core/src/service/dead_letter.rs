//! Who dead-lettered a message, and in which saga: the headers every dead letter of a
//! service carries besides its reason, so that an operator can tell whose it is to redrive.

use crate::control::{DEAD_LETTER_SAGA_HEADER, DEAD_LETTER_SERVICE_HEADER};
use crate::envelope::RawMessage;
use crate::ids::SagaId;
use crate::transport::Delivery;

use super::runtime::Runtime;

impl Runtime {
    /// `message` marked as this service's dead letter, of `saga` when it is known.
    pub(super) fn mark_dead_letter(&self, message: &mut RawMessage, saga: Option<SagaId>) {
        message.headers.extend(self.dead_letter_marks(saga));
    }

    /// `delivery`, whose message goes to the dead-letter destination, marked so. Its saga
    /// is `saga`, or, when it did not decode, what its `sagaid` attribute says, if readable.
    pub(super) fn mark_dead_delivery(&self, delivery: &mut Delivery, saga: Option<SagaId>) {
        let saga = saga.or_else(|| readable_saga(&delivery.message));
        for (name, value) in self.dead_letter_marks(saga) {
            delivery.add_header(name, &value);
        }
    }

    fn dead_letter_marks(&self, saga: Option<SagaId>) -> Vec<(&'static str, String)> {
        let mut marks = vec![(DEAD_LETTER_SERVICE_HEADER, self.name().to_owned())];
        if let Some(saga) = saga {
            marks.push((DEAD_LETTER_SAGA_HEADER, saga.to_string()));
        }
        marks
    }
}

/// The saga id of a message that is not a valid event, where it says one: its `ce_sagaid`
/// header (`ce-sagaid` as some bindings write it), or the `sagaid` of a structured-mode
/// document.
fn readable_saga(message: &RawMessage) -> Option<SagaId> {
    let text = match message
        .header("ce_sagaid")
        .or_else(|| message.header("ce-sagaid"))
    {
        Some(value) => std::str::from_utf8(value).ok()?.to_owned(),
        None => {
            #[derive(serde::Deserialize)]
            struct Structured {
                sagaid: String,
            }
            serde_json::from_slice::<Structured>(&message.body)
                .ok()?
                .sagaid
        }
    };
    text.trim().parse().ok()
}

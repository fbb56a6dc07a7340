//! The runtime's control events besides aborts and acknowledgements: what a service says about
//! itself when it starts, and what an operator asks one service to do again (docs/console.md).
//!
//! They travel on the saga's topic like every event, with `sagakind` `step` and a type in the
//! `choreo.` namespace that no step handles, so that every participant, in any language,
//! ignores them (docs/concepts.md, rule 6). Only the service a request names acts on it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::deadline::Deadline;
use crate::envelope::{Envelope, EnvelopeError, RawMessage, SagaKind};
use crate::event::Event;
use crate::ids::{EventId, SagaId};
use crate::saga_data::SagaData;
use crate::trace::TraceContext;

/// The prefix of every type of the runtime's own events. A step may not handle one.
pub const CONTROL_PREFIX: &str = "choreo.";

/// Whether `event_type` is one of the runtime's own events (aborts and acknowledgements
/// included).
pub fn is_control(event_type: &str) -> bool {
    event_type.starts_with(CONTROL_PREFIX)
}

/// Published once by every service when it starts, in a saga of its own (a fresh saga id, no
/// causation): who it is and what it does, for the monitor's choreography graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDescribed {
    /// The service (its consumer group).
    pub service: String,
    /// The version its builder was given (`ServiceBuilder::version`), `unknown` if none.
    pub version: String,
    /// This run of the service: a fresh id at every start, so that two instances, or two
    /// versions, running at once can be told apart.
    pub instance: String,
    /// The saga's topic.
    pub topic: String,
    /// Its steps: the types each waits for (more than one for a join) and may emit.
    pub steps: Vec<StepDescribed>,
    /// The event types whose compensation it holds (step outputs, or starts it initiates).
    pub compensates: Vec<String>,
    /// The types it starts sagas with.
    pub initiates: Vec<String>,
    /// The saga's terminal types, as this service was built with them.
    pub terminal: Vec<String>,
    /// `parallel` or `reverse`.
    pub compensation_order: String,
}

impl Event for ServiceDescribed {
    const TYPE: &'static str = "choreo.ServiceDescribed.v1";
}

/// One step of a [`ServiceDescribed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDescribed {
    /// The types it waits for: one, or every part of a join.
    pub inputs: Vec<String>,
    /// The types it may emit (none for a step that only acts).
    pub outputs: Vec<String>,
}

/// Asks `service` to handle a dead-lettered event once more (a step that failed for good
/// and was held, see `ServiceOptions::hold_failed_steps`), published in the event's saga.
/// Every other service ignores it. The service handles the event as if it were delivered
/// again, with every rule in force: an event it already handled, or one of an ended saga,
/// is not acted on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedriveRequested {
    /// The service that dead-lettered the event.
    pub service: String,
    /// The event, as a structured-mode CloudEvent (one JSON document).
    pub event: Box<RawValue>,
    /// Who asked, for the history (e.g. `console`, `cli`).
    pub requested_by: String,
}

impl Event for RedriveRequested {
    const TYPE: &'static str = "choreo.RedriveRequested.v1";
}

/// Asks `service` to run again, from its journal, the compensations of an aborted saga that
/// failed for good, published in that saga. Once they run, the service publishes a new
/// `choreo.SagaCompensated.v1` for the saga, listing what it undid and what still failed.
/// Every other service ignores it; so does `service` when nothing of the saga failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationRetryRequested {
    /// The service whose compensations failed.
    pub service: String,
    /// Who asked, for the history.
    pub requested_by: String,
}

impl Event for CompensationRetryRequested {
    const TYPE: &'static str = "choreo.CompensationRetryRequested.v1";
}

/// The header of a dead letter naming the service (consumer group) that dead-lettered it.
pub const DEAD_LETTER_SERVICE_HEADER: &str = "choreo-dead-letter-service";
/// The header of a dead letter naming its saga, when the message decoded far enough to
/// have one.
pub const DEAD_LETTER_SAGA_HEADER: &str = "choreo-dead-letter-saga";

/// The prefix of the headers a dead letter gets on its way to the dead-letter destination
/// (its reason, its topic, the service, the saga).
pub const DEAD_LETTER_HEADER_PREFIX: &str = "choreo-dead-letter-";

/// The request that has `service` handle `dead_letter` once more (a message of the saga's
/// dead-letter destination, in binary or structured mode, its `choreo-dead-letter-*` headers
/// left as they came): an event of the dead-lettered event's saga, with its deadline, saga
/// data and trace, caused by it, from `requested_by`. Publish it on the saga's topic.
///
/// A dead letter that does not decode as an event (one dead-lettered as malformed, or cut
/// down for its size) cannot be redriven: the error says why.
pub fn redrive_request(
    dead_letter: &RawMessage,
    service: &str,
    requested_by: &str,
) -> Result<Envelope, EnvelopeError> {
    let mut message = dead_letter.clone();
    message
        .headers
        .retain(|name, _| !name.starts_with(DEAD_LETTER_HEADER_PREFIX));
    let event = Envelope::decode(&message)?;
    let event_json = RawValue::from_string(event.to_json())
        .map_err(|error| EnvelopeError::InvalidData(error.to_string()))?;
    let request = RedriveRequested {
        service: service.to_owned(),
        event: event_json,
        requested_by: requested_by.to_owned(),
    };
    Ok(Envelope {
        id: EventId::new(),
        source: requested_by.to_owned(),
        event_type: RedriveRequested::TYPE.to_owned(),
        time: SystemTime::now(),
        saga_id: event.saga_id,
        causation_id: Some(event.id),
        joined_causes: Vec::new(),
        deadline: event.deadline,
        kind: SagaKind::Step,
        trace: event.trace.clone(),
        data: raw(&request),
        saga_data: event.saga_data.clone(),
    })
}

/// The request that has `service` run again the compensations of aborted saga `saga` that
/// failed for good there: an event of that saga, with its `deadline` (as every event of the
/// saga carries it: parse the `sagadeadline` attribute with `str::parse`), from
/// `requested_by`, on a trace of its own. Publish it on the saga's topic.
pub fn retry_request(
    saga: SagaId,
    deadline: Deadline,
    service: &str,
    requested_by: &str,
) -> Envelope {
    let request = CompensationRetryRequested {
        service: service.to_owned(),
        requested_by: requested_by.to_owned(),
    };
    Envelope {
        id: EventId::new(),
        source: requested_by.to_owned(),
        event_type: CompensationRetryRequested::TYPE.to_owned(),
        time: SystemTime::now(),
        saga_id: saga,
        causation_id: None,
        joined_causes: Vec::new(),
        deadline,
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: raw(&request),
        saga_data: SagaData::default(),
    }
}

/// Which services act on an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Those the saga rules concern: an event of the saga.
    Saga,
    /// None: a service's description, or a request that names no service.
    Nobody,
    /// Only this one: an operator's request.
    Service(String),
}

/// Who acts on `envelope` (docs/wire-format.md).
pub(crate) fn audience(envelope: &Envelope) -> Audience {
    #[derive(Deserialize)]
    struct Addressed {
        service: String,
    }
    match envelope.event_type.as_str() {
        ServiceDescribed::TYPE => Audience::Nobody,
        RedriveRequested::TYPE | CompensationRetryRequested::TYPE => {
            match serde_json::from_str::<Addressed>(envelope.data.get()) {
                Ok(addressed) => Audience::Service(addressed.service),
                Err(_) => Audience::Nobody,
            }
        }
        _ => Audience::Saga,
    }
}

/// `value` as JSON; the control events are strings and lists of them, which always
/// serialize.
fn raw<T: Serialize>(value: &T) -> Box<RawValue> {
    match serde_json::value::to_raw_value(value) {
        Ok(raw) => raw,
        Err(error) => unreachable!("a control event always serializes: {error}"),
    }
}

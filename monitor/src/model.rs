//! What the monitor knows, as the API returns it and the pages show it: every type here is
//! serialised as is by the JSON API (docs/console.md).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A saga's status, derived from its events alone (docs/console.md, "Statuses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started, neither completed nor aborted, within its deadline (plus the grace).
    Running,
    /// A terminal event was published and no abort.
    Completed,
    /// Aborted; not every participant has acknowledged its compensation yet.
    Compensating,
    /// Aborted, and every participant acknowledged, with nothing failed.
    Compensated,
    /// Aborted, every participant acknowledged, and some compensation failed for good.
    CompensationFailed,
    /// Needs a person: see [`StuckReason`].
    Stuck,
}

impl Status {
    /// Every status, in the order the console lists counts.
    pub const ALL: [Status; 6] = [
        Status::Stuck,
        Status::Running,
        Status::Compensating,
        Status::CompensationFailed,
        Status::Compensated,
        Status::Completed,
    ];

    /// The spelling of the API, the CLI and the pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Compensating => "compensating",
            Status::Compensated => "compensated",
            Status::CompensationFailed => "compensation_failed",
            Status::Stuck => "stuck",
        }
    }

    /// Whether the saga has ended: completed, compensated, or compensation failed.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Compensated | Status::CompensationFailed
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status spelled wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`: expected running, completed, compensating, compensated, compensation_failed or stuck")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
            .ok_or_else(|| UnknownStatus(value.to_owned()))
    }
}

/// Why a saga is [`Status::Stuck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StuckReason {
    /// Past its deadline plus the grace, and no abort seen.
    PastDeadline,
    /// Aborted longer ago than the compensation limit, and not every participant has
    /// acknowledged.
    CompensationOverdue,
    /// One of its events was dead-lettered and not redriven since; the saga has not ended.
    DeadLetter,
}

impl StuckReason {
    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            StuckReason::PastDeadline => "past its deadline with no abort",
            StuckReason::CompensationOverdue => "compensating for too long",
            StuckReason::DeadLetter => "holds a dead-lettered event",
        }
    }
}

/// One saga in the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaSummary {
    /// The saga id.
    pub saga_id: String,
    /// Its status now.
    pub status: Status,
    /// Why it is stuck, when it is.
    pub stuck: Vec<StuckReason>,
    /// The type of its first event (the start), if seen.
    pub started_with: Option<String>,
    /// The service that started it.
    pub started_by: Option<String>,
    /// When its first event was emitted (RFC 3339).
    pub started_at: String,
    /// Its deadline (RFC 3339).
    pub deadline: String,
    /// Milliseconds left until the deadline, while it runs (negative past it).
    pub time_left_ms: Option<i64>,
    /// When it ended (the terminal event, or the last acknowledgement), if it has.
    pub ended_at: Option<String>,
    /// From its first event to its end, if it has ended.
    pub duration_ms: Option<i64>,
    /// Why it aborted (`rejected`, `timed_out`, `dead_lettered`), if it did.
    pub abort_reason: Option<String>,
    /// The abort's detail, for people.
    pub abort_detail: Option<String>,
    /// How many events of it were recorded.
    pub events: usize,
    /// How many dead letters it holds.
    pub dead_letters: usize,
}

/// A participant of one saga: every service that published one of its events,
/// acknowledgements aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The service.
    pub service: String,
    /// After an abort: whether its acknowledgement was seen.
    pub acknowledged: bool,
    /// The step event types it undid (newest first), from its latest acknowledgement.
    pub compensated: Vec<String>,
    /// The step event types whose undo failed for good, from its latest acknowledgement.
    pub failed: Vec<String>,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// CloudEvents `id`.
    pub id: String,
    /// The saga.
    pub saga_id: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// The emitting service (`source`).
    pub source: String,
    /// `start`, `step`, `complete`, `abort` or `compensated`.
    pub kind: String,
    /// When it was emitted (RFC 3339).
    pub time: String,
    /// Milliseconds from the saga's first event.
    pub offset_ms: i64,
    /// The event it was caused by.
    pub causation_id: Option<String>,
    /// The saga's deadline as this event carries it (RFC 3339).
    pub deadline: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// `data`, JSON.
    pub data: serde_json::Value,
    /// `sagadata`, JSON object (empty when none).
    pub saga_data: serde_json::Value,
}

/// One copy of a dead letter: one consumer group rejected the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterCopy {
    /// The service (consumer group) that dead-lettered it, when the header names it.
    pub service: Option<String>,
    /// Why.
    pub reason: String,
    /// When the monitor recorded it (RFC 3339).
    pub recorded_at: String,
}

/// A dead-lettered message, its copies grouped: one per consumer group that rejected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The monitor's id of the message: its event id when it decodes, else a digest of its
    /// bytes. What `redrive` takes.
    pub id: String,
    /// The saga, when known.
    pub saga_id: Option<String>,
    /// The event's type, when it decodes.
    pub event_type: Option<String>,
    /// The event's source, when it decodes.
    pub source: Option<String>,
    /// The topic it came from.
    pub topic: String,
    /// The copies, oldest first.
    pub copies: Vec<DeadLetterCopy>,
    /// The body as text (lossy), cut to 64 KiB.
    pub body: String,
    /// When it was redriven (RFC 3339), if it was.
    pub redriven_at: Option<String>,
}

/// One saga's page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDetail {
    /// The summary, as in the list.
    pub summary: SagaSummary,
    /// Every participant, in order of appearance.
    pub participants: Vec<Participant>,
    /// Every event, in the order emitted.
    pub events: Vec<EventRecord>,
    /// Its dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// While it runs: the steps that may still come, from the services' descriptions, as
    /// `service: input type -> output types`.
    pub expected: Vec<String>,
}

/// The saga list with counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaList {
    /// How many sagas of each status match the filters' other parts, every status listed.
    pub counts: Vec<(Status, usize)>,
    /// The sagas that match, stuck first, then newest first.
    pub sagas: Vec<SagaSummary>,
}

/// A service as it last described itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNode {
    /// Its latest description.
    pub description: choreo_core::control::ServiceDescribed,
    /// When the description was emitted (RFC 3339).
    pub described_at: String,
    /// Versions seen running at once (more than one is a problem).
    pub versions: Vec<String>,
}

/// An arrow of the choreography graph: `from` emits `event_type`, which `to` consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The emitting service.
    pub from: String,
    /// The event type.
    pub event_type: String,
    /// The consuming service; none when nobody handles it (a terminal event, or a problem).
    pub to: Option<String>,
}

/// What is wrong with the choreography, as the descriptions show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Problem {
    /// An event type emitted that no service handles, and that is not terminal.
    Unconsumed {
        /// The type.
        event_type: String,
        /// Who emits it.
        emitted_by: String,
    },
    /// A step waits for a type nobody emits.
    NeverEmitted {
        /// The type.
        event_type: String,
        /// Who waits.
        awaited_by: String,
    },
    /// A terminal type no initiating event leads to.
    UnreachableTerminal {
        /// The type.
        event_type: String,
    },
    /// A step output with no compensation, in a saga where a later step can still fail.
    Uncompensated {
        /// The type.
        event_type: String,
        /// Who emits it.
        emitted_by: String,
    },
    /// Two versions of one service ran at once.
    TwoVersions {
        /// The service.
        service: String,
        /// The versions.
        versions: Vec<String>,
    },
    /// Events of a type no described service handles were seen on the topic (often a
    /// misspelt type).
    UnhandledType {
        /// The type.
        event_type: String,
        /// How many such events were recorded.
        seen: usize,
    },
}

/// The choreography graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    /// Every described service.
    pub services: Vec<ServiceNode>,
    /// Who emits what to whom.
    pub edges: Vec<Edge>,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

/// The saga list's filters, as the API's query string and the list page's form carry them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaFilter {
    /// Only sagas of this status.
    pub status: Option<Status>,
    /// Only sagas whose id, or any event's type, source or data, contains this text.
    pub search: Option<String>,
    /// Only sagas started at or after this instant (RFC 3339).
    pub from: Option<String>,
    /// Only sagas started before this instant (RFC 3339).
    pub to: Option<String>,
    /// At most this many sagas (default 200).
    pub limit: Option<usize>,
}

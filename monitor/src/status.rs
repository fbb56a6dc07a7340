//! A saga's status from its events alone (docs/console.md, "Statuses").

use std::time::Duration;

use choreo_core::control::{CompensationRetryRequested, RedriveRequested};
use choreo_core::{Event, SagaAborted, SagaCompensated};

use crate::model::{Participant, SagaSummary, Status, StuckReason};
use crate::store::{StoredDeadLetter, StoredEvent};
use crate::time::rfc3339;

/// When a saga counts as stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckAfter {
    /// A running saga is stuck this long past its deadline with no abort seen; it covers
    /// the services' own grace before they abort (one second by default).
    pub deadline_grace: Duration,
    /// An aborted saga is stuck once compensating for this long without every
    /// participant's acknowledgement.
    pub compensation: Duration,
}

impl Default for StuckAfter {
    fn default() -> Self {
        Self {
            deadline_grace: Duration::from_secs(10),
            compensation: Duration::from_secs(60),
        }
    }
}

/// What the events of one saga say, at `now_us`.
pub(crate) struct Derived {
    pub(crate) summary: SagaSummary,
    pub(crate) participants: Vec<Participant>,
}

/// Whether `event` is an operator's request rather than a participant's event.
pub(crate) fn is_request(event: &StoredEvent) -> bool {
    event.event_type == RedriveRequested::TYPE
        || event.event_type == CompensationRetryRequested::TYPE
}

/// When the dead-lettered message `message_id` was last redriven, unless that redrive failed
/// as well: a copy dead-lettered again names the request it came back after.
pub(crate) fn redriven_at(
    message_id: &str,
    letters: &[StoredDeadLetter],
    events: &[StoredEvent],
) -> Option<i64> {
    let latest = events
        .iter()
        .filter(|event| {
            event.event_type == RedriveRequested::TYPE
                && event.causation_id.as_deref() == Some(message_id)
        })
        .max_by_key(|event| event.time_us)?;
    let failed_again = letters.iter().any(|letter| {
        letter.message_id == message_id
            && letter
                .reason
                .contains(&format!("redrive request {}", latest.id))
    });
    (!failed_again).then_some(latest.time_us)
}

/// Derives the saga's status. `events` are the saga's, in the order emitted (at least one);
/// `letters` its dead-letter copies.
pub(crate) fn derive(
    saga_id: &str,
    events: &[StoredEvent],
    letters: &[StoredDeadLetter],
    now_us: i64,
    stuck_after: StuckAfter,
) -> Derived {
    let first = events.first();
    let start_us = first.map_or(now_us, |event| event.time_us);
    let deadline_us = events
        .iter()
        .map(|event| event.deadline_us)
        .max()
        .unwrap_or(now_us);
    let started = events.iter().find(|event| event.kind == "start");

    let mut participants: Vec<Participant> = Vec::new();
    for event in events {
        if event.kind != "compensated" && !is_request(event) {
            participant(&mut participants, &event.source);
        }
    }
    let mut last_ack_us = None;
    for event in events.iter().filter(|event| event.kind == "compensated") {
        let Ok(ack) = serde_json::from_str::<SagaCompensated>(&event.data) else {
            continue;
        };
        last_ack_us = Some(event.time_us);
        let participant = participant(&mut participants, &ack.service);
        // A later acknowledgement (after a retry) adds what it undid and says what still
        // failed.
        participant.acknowledged = true;
        for undone in ack.compensated {
            if !participant.compensated.contains(&undone) {
                participant.compensated.push(undone);
            }
        }
        participant.failed = ack.failed;
    }

    let abort = events.iter().find(|event| event.kind == "abort");
    let aborted = abort.and_then(|event| serde_json::from_str::<SagaAborted>(&event.data).ok());
    let complete = events.iter().find(|event| event.kind == "complete");
    let redriven =
        |letter: &StoredDeadLetter| redriven_at(&letter.message_id, letters, events).is_some();
    let held_letter = letters.iter().any(|letter| !redriven(letter));

    let mut stuck = Vec::new();
    let (status, ended_us) = if let Some(abort) = abort {
        let all_acknowledged = participants
            .iter()
            .all(|participant| participant.acknowledged);
        if all_acknowledged {
            let failed = participants
                .iter()
                .any(|participant| !participant.failed.is_empty());
            let status = if failed {
                Status::CompensationFailed
            } else {
                Status::Compensated
            };
            (status, last_ack_us)
        } else {
            if now_us - abort.time_us > micros_of(stuck_after.compensation) {
                stuck.push(StuckReason::CompensationOverdue);
            }
            if held_letter {
                stuck.push(StuckReason::DeadLetter);
            }
            (Status::Compensating, None)
        }
    } else if let Some(complete) = complete {
        (Status::Completed, Some(complete.time_us))
    } else {
        if now_us > deadline_us + micros_of(stuck_after.deadline_grace) {
            stuck.push(StuckReason::PastDeadline);
        }
        if held_letter {
            stuck.push(StuckReason::DeadLetter);
        }
        (Status::Running, None)
    };
    let status = if stuck.is_empty() {
        status
    } else {
        Status::Stuck
    };

    let summary = SagaSummary {
        saga_id: saga_id.to_owned(),
        status,
        stuck,
        started_with: started.map(|event| event.event_type.clone()),
        started_by: started.map(|event| event.source.clone()),
        started_at: rfc3339(start_us),
        deadline: rfc3339(deadline_us),
        time_left_ms: (!status.is_ended()).then(|| (deadline_us - now_us) / 1000),
        ended_at: ended_us.map(rfc3339),
        duration_ms: ended_us.map(|ended| (ended - start_us) / 1000),
        abort_reason: aborted.as_ref().map(|aborted| {
            serde_json::to_value(aborted.reason)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default()
        }),
        abort_detail: aborted.map(|aborted| aborted.detail),
        events: events.len(),
        dead_letters: letters.len(),
    };
    Derived {
        summary,
        participants,
    }
}

/// The participant `service` of `participants`, added (in order of appearance) if new.
fn participant<'a>(participants: &'a mut Vec<Participant>, service: &str) -> &'a mut Participant {
    let at = match participants
        .iter()
        .position(|known| known.service == service)
    {
        Some(at) => at,
        None => {
            participants.push(Participant {
                service: service.to_owned(),
                acknowledged: false,
                compensated: Vec::new(),
                failed: Vec::new(),
            });
            participants.len() - 1
        }
    };
    &mut participants[at]
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

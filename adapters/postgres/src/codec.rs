//! How choreo's values are kept in columns: instants as nanoseconds since the epoch,
//! statuses as short words, envelopes as their structured-mode JSON text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use choreo_core::journal::{AbortReason, CompensationState, SagaStatus};
use choreo_core::store::{OutgoingKind, SentKind};
use choreo_core::{Envelope, StoreError};

/// `instant` as nanoseconds since the Unix epoch; an error past the year 2262 or before 1677.
pub(crate) fn nanos(instant: SystemTime) -> Result<i64, StoreError> {
    let nanos: i128 = match instant.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    i64::try_from(nanos).map_err(|_| {
        StoreError::new(format!(
            "the instant {instant:?} is out of the range the store keeps (1677 to 2262)"
        ))
    })
}

/// `instant` as nanoseconds since the epoch, clamped to what a column holds: for cutoffs.
pub(crate) fn nanos_clamped(instant: SystemTime) -> i64 {
    nanos(instant).unwrap_or_else(|_| {
        if instant > UNIX_EPOCH {
            i64::MAX
        } else {
            i64::MIN
        }
    })
}

/// The instant `nanos` nanoseconds after the Unix epoch.
pub(crate) fn instant(nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// `status` as the `status` and `abort_reason` columns.
pub(crate) fn status(status: &SagaStatus) -> (&'static str, Option<&'static str>) {
    match status {
        SagaStatus::Active => ("active", None),
        SagaStatus::Completed => ("completed", None),
        SagaStatus::Aborted { reason } => ("aborted", Some(abort_reason(*reason))),
    }
}

fn abort_reason(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::Rejected => "rejected",
        AbortReason::TimedOut => "timed_out",
        AbortReason::DeadLettered => "dead_lettered",
    }
}

/// The status kept in the `status` and `abort_reason` columns.
pub(crate) fn status_of(status: &str, reason: Option<&str>) -> Result<SagaStatus, StoreError> {
    Ok(match (status, reason) {
        ("active", None) => SagaStatus::Active,
        ("completed", None) => SagaStatus::Completed,
        ("aborted", Some(reason)) => SagaStatus::Aborted {
            reason: match reason {
                "rejected" => AbortReason::Rejected,
                "timed_out" => AbortReason::TimedOut,
                "dead_lettered" => AbortReason::DeadLettered,
                other => return Err(corrupt(format!("unknown abort reason `{other}`"))),
            },
        },
        (status, reason) => {
            return Err(corrupt(format!(
                "unknown saga status `{status}` (abort reason {reason:?})"
            )))
        }
    })
}

/// `state` as the `compensation` and `compensation_failure` columns.
pub(crate) fn compensation(state: &CompensationState) -> (&'static str, Option<&str>) {
    match state {
        CompensationState::Pending => ("pending", None),
        CompensationState::Compensated => ("compensated", None),
        CompensationState::Failed { reason } => ("failed", Some(reason)),
        CompensationState::NotRequired => ("not_required", None),
    }
}

/// The compensation state kept in the `compensation` and `compensation_failure` columns.
pub(crate) fn compensation_of(
    state: &str,
    failure: Option<String>,
) -> Result<CompensationState, StoreError> {
    Ok(match (state, failure) {
        ("pending", None) => CompensationState::Pending,
        ("compensated", None) => CompensationState::Compensated,
        ("failed", Some(reason)) => CompensationState::Failed { reason },
        ("not_required", None) => CompensationState::NotRequired,
        (state, _) => return Err(corrupt(format!("unknown compensation state `{state}`"))),
    })
}

/// An outbox entry's kind as the `kind` and `reason` columns; `None` for a step output,
/// which the journal keeps.
pub(crate) fn outbox_kind(
    kind: &OutgoingKind,
) -> Result<Option<(&'static str, Option<&str>)>, StoreError> {
    match kind {
        OutgoingKind::Step { .. } => Ok(None),
        OutgoingKind::Event => Ok(Some(("event", None))),
        OutgoingKind::DeadLetter { reason } => Ok(Some(("dead_letter", Some(reason)))),
        other => Err(StoreError::unsupported(format!(
            "this version of choreo's PostgreSQL store cannot keep an outgoing event of kind {other:?}"
        ))),
    }
}

/// The kind kept in an outbox row's `kind` and `reason` columns.
pub(crate) fn outbox_kind_of(
    kind: &str,
    reason: Option<String>,
) -> Result<OutgoingKind, StoreError> {
    match (kind, reason) {
        ("event", None) => Ok(OutgoingKind::Event),
        ("dead_letter", Some(reason)) => Ok(OutgoingKind::DeadLetter { reason }),
        (kind, _) => Err(corrupt(format!("unknown outbox kind `{kind}`"))),
    }
}

/// The outbox `kind` column of a sent event; `None` for a step output.
pub(crate) fn sent_kind(kind: SentKind) -> Option<&'static str> {
    match kind {
        SentKind::Step { .. } => None,
        SentKind::Event => Some("event"),
        SentKind::DeadLetter => Some("dead_letter"),
    }
}

/// A step position as the `position` column.
pub(crate) fn position(position: usize) -> Result<i32, StoreError> {
    i32::try_from(position)
        .map_err(|_| StoreError::new(format!("step position {position} is out of range")))
}

/// The envelope kept as structured-mode JSON text.
pub(crate) fn envelope_of(json: &str) -> Result<Envelope, StoreError> {
    Envelope::from_json(json.as_bytes())
        .map_err(|error| corrupt(format!("a stored event does not decode: {error}")))
}

/// A row this store did not write, or an older store wrote differently.
pub(crate) fn corrupt(what: String) -> StoreError {
    StoreError::new(format!(
        "unexpected data in choreo's PostgreSQL tables: {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_to_the_nanosecond_on_both_sides_of_the_epoch() {
        for at in [
            UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(12, 1),
            UNIX_EPOCH,
        ] {
            assert_eq!(instant(nanos(at).unwrap()), at);
        }
        let far = UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400);
        assert!(nanos(far).is_err());
        assert_eq!(nanos_clamped(far), i64::MAX);
    }

    #[test]
    fn statuses_and_compensations_round_trip() {
        for status in [
            SagaStatus::Active,
            SagaStatus::Completed,
            SagaStatus::Aborted {
                reason: AbortReason::TimedOut,
            },
        ] {
            let (word, reason) = super::status(&status);
            assert_eq!(status_of(word, reason).unwrap(), status);
        }
        let failed = CompensationState::Failed {
            reason: "ledger down".into(),
        };
        let (word, failure) = compensation(&failed);
        assert_eq!(
            compensation_of(word, failure.map(str::to_owned)).unwrap(),
            failed
        );
        assert!(status_of("paused", None).is_err());
    }
}

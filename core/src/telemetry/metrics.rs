//! The saga metrics, as OpenTelemetry instruments. Each carries the attributes
//! `choreo.service` and `saga.name`, plus those named below.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::KeyValue;

use super::attributes::{SAGA_NAME, SAGA_OUTCOME, SAGA_STEP, SERVICE};
use crate::error::ErrorKind;
use crate::journal::AbortReason;

/// Sagas this service started (counted by the initiator only).
pub const SAGAS_STARTED: &str = "choreo.saga.started";
/// Sagas that ended, by `saga.outcome`: `completed`, `compensated`, `timed_out`
/// (counted by the initiator only, when the outcome reaches it).
pub const SAGAS_ENDED: &str = "choreo.saga.ended";
/// Seconds from a saga's start to its outcome, by `saga.outcome` (initiator only).
pub const SAGA_DURATION: &str = "choreo.saga.duration";
/// Seconds a step took, retries included, by `saga.step` (the handled event type) and
/// `choreo.step.result`: `done`, `rejected`, `failed`, `timed_out`.
pub const STEP_DURATION: &str = "choreo.step.duration";
/// Attempts repeated after a transient error, by `choreo.handler`: `step` or `compensation`.
pub const RETRIES: &str = "choreo.handler.retries";
/// Handler errors by `error.type`: `transient`, `permanent` or `panic`, and `choreo.handler`.
pub const HANDLER_ERRORS: &str = "choreo.handler.errors";
/// Messages sent to the dead-letter destination, by `choreo.dead_letter.reason`:
/// `malformed`, `step_failed`, `compensation_failed`, `invalid_abort`.
pub const DEAD_LETTERS: &str = "choreo.dead_letters";
/// Compensations run, by `choreo.compensation.result`: `compensated` or `failed`.
pub const COMPENSATIONS: &str = "choreo.compensations";
/// Handlings made again because another instance of the service changed their saga's
/// record first (a shared store's conflict; docs/deployment.md).
pub const CONFLICTS: &str = "choreo.handling.conflicts";
/// Work another instance left undone, claimed and done here, by `choreo.takeover.kind`:
/// `deadline` (an overdue saga aborted) or `event` (an unsent event sent).
pub const TAKEOVERS: &str = "choreo.takeovers";

/// How a step ended, for [`STEP_DURATION`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum StepResultLabel {
    Done,
    Rejected,
    Failed,
    TimedOut,
}

/// Why a message was dead-lettered, for [`DEAD_LETTERS`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum DeadLetterReason {
    Malformed,
    StepFailed,
    CompensationFailed,
    InvalidAbort,
}

/// Which kind of handler an error or retry belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HandlerLabel {
    Step,
    Compensation,
}

/// How a saga ended, from its initiator's point of view.
pub(crate) fn outcome_label(aborted: Option<AbortReason>) -> &'static str {
    match aborted {
        None => "completed",
        Some(AbortReason::TimedOut) => "timed_out",
        Some(_) => "compensated",
    }
}

/// The instruments of one service.
pub(crate) struct Metrics {
    common: [KeyValue; 2],
    sagas_started: Counter<u64>,
    sagas_ended: Counter<u64>,
    saga_duration: Histogram<f64>,
    step_duration: Histogram<f64>,
    retries: Counter<u64>,
    handler_errors: Counter<u64>,
    dead_letters: Counter<u64>,
    compensations: Counter<u64>,
    conflicts: Counter<u64>,
    takeovers: Counter<u64>,
}

impl Metrics {
    pub(crate) fn new(meter: &Meter, service: &str, saga: &str) -> Self {
        let counter = |name: &'static str, unit: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(description)
                .build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .build()
        };
        Self {
            // Shared, so that attaching them to a measurement copies no string.
            common: [
                KeyValue::new(SERVICE, Arc::<str>::from(service)),
                KeyValue::new(SAGA_NAME, Arc::<str>::from(saga)),
            ],
            sagas_started: counter(SAGAS_STARTED, "{saga}", "Sagas started by this service"),
            sagas_ended: counter(SAGAS_ENDED, "{saga}", "Sagas started here that ended"),
            saga_duration: seconds(SAGA_DURATION, "Time from a saga's start to its outcome"),
            step_duration: seconds(STEP_DURATION, "Time a step took, retries included"),
            retries: counter(
                RETRIES,
                "{retry}",
                "Handler attempts repeated after a transient error",
            ),
            handler_errors: counter(
                HANDLER_ERRORS,
                "{error}",
                "Errors returned or panics raised by handlers",
            ),
            dead_letters: counter(
                DEAD_LETTERS,
                "{message}",
                "Messages sent to the dead-letter destination",
            ),
            compensations: counter(COMPENSATIONS, "{compensation}", "Compensations run"),
            conflicts: counter(
                CONFLICTS,
                "{handling}",
                "Handlings made again because another instance changed their saga first",
            ),
            takeovers: counter(
                TAKEOVERS,
                "{item}",
                "Work another instance left undone, taken over here",
            ),
        }
    }

    fn with(&self, extra: impl IntoIterator<Item = KeyValue>) -> Vec<KeyValue> {
        self.common.iter().cloned().chain(extra).collect()
    }

    pub(crate) fn saga_started(&self) {
        self.sagas_started.add(1, &self.common);
    }

    pub(crate) fn saga_ended(&self, outcome: &'static str, duration: Duration) {
        let attributes = self.with([KeyValue::new(SAGA_OUTCOME, outcome)]);
        self.sagas_ended.add(1, &attributes);
        self.saga_duration
            .record(duration.as_secs_f64(), &attributes);
    }

    /// Once per step handled: its attributes are built without allocating.
    pub(crate) fn step_finished(
        &self,
        step: Cow<'static, str>,
        result: StepResultLabel,
        duration: Duration,
    ) {
        let result = match result {
            StepResultLabel::Done => "done",
            StepResultLabel::Rejected => "rejected",
            StepResultLabel::Failed => "failed",
            StepResultLabel::TimedOut => "timed_out",
        };
        let [service, saga] = self.common.clone();
        self.step_duration.record(
            duration.as_secs_f64(),
            &[
                service,
                saga,
                KeyValue::new(SAGA_STEP, step),
                KeyValue::new("choreo.step.result", result),
            ],
        );
    }

    pub(crate) fn handler_failed(
        &self,
        handler: HandlerLabel,
        kind: Option<ErrorKind>,
        retrying: bool,
    ) {
        let handler = KeyValue::new("choreo.handler", handler_name(handler));
        let error_type = match kind {
            Some(ErrorKind::Transient) => "transient",
            Some(ErrorKind::Permanent) => "permanent",
            None => "panic",
        };
        self.handler_errors.add(
            1,
            &self.with([handler.clone(), KeyValue::new("error.type", error_type)]),
        );
        if retrying {
            self.retries.add(1, &self.with([handler]));
        }
    }

    pub(crate) fn dead_lettered(&self, reason: DeadLetterReason) {
        let reason = match reason {
            DeadLetterReason::Malformed => "malformed",
            DeadLetterReason::StepFailed => "step_failed",
            DeadLetterReason::CompensationFailed => "compensation_failed",
            DeadLetterReason::InvalidAbort => "invalid_abort",
        };
        self.dead_letters.add(
            1,
            &self.with([KeyValue::new("choreo.dead_letter.reason", reason)]),
        );
    }

    pub(crate) fn conflicted(&self) {
        self.conflicts.add(1, &self.common);
    }

    pub(crate) fn taken_over(&self, deadlines: usize, events: usize) {
        for (kind, count) in [("deadline", deadlines), ("event", events)] {
            if count > 0 {
                self.takeovers.add(
                    count as u64,
                    &self.with([KeyValue::new("choreo.takeover.kind", kind)]),
                );
            }
        }
    }

    pub(crate) fn compensated(&self, succeeded: bool) {
        let result = if succeeded { "compensated" } else { "failed" };
        self.compensations.add(
            1,
            &self.with([KeyValue::new("choreo.compensation.result", result)]),
        );
    }
}

fn handler_name(handler: HandlerLabel) -> &'static str {
    match handler {
        HandlerLabel::Step => "step",
        HandlerLabel::Compensation => "compensation",
    }
}

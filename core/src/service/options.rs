//! Tuning of a running service.

use std::time::Duration;

use crate::retry::RetryPolicy;

/// How a service runs. Build with `ServiceOptions::default()` and the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceOptions {
    /// Deliveries held at once, across sagas. Events of one saga are handled one at a time.
    pub concurrency: usize,
    /// Retries of a step after transient errors; then the event is dead-lettered and the saga
    /// aborted (or held, with [`hold_failed_steps`](Self::hold_failed_steps)).
    pub step_retry: RetryPolicy,
    /// Retries of a compensation; then it is dead-lettered and reported.
    pub compensation_retry: RetryPolicy,
    /// How long after the deadline a participant that did not start the saga waits before it
    /// publishes the abort itself. The initiator fires at the deadline; the grace spares the
    /// broker one abort per participant while the initiator is up.
    pub deadline_grace: Duration,
    /// Wait before an event is returned for redelivery after a broker or store failure.
    pub redelivery_delay: Duration,
    /// How long [`shutdown`](crate::RunningService::shutdown) waits for in-flight work.
    pub shutdown_timeout: Duration,
    /// How long after its deadline a finished saga's records and inbox ids are kept. An
    /// event of a saga past its deadline by more than this is ignored (docs/stores.md).
    pub retention: Duration,
    /// How often records past the retention are purged.
    pub purge_interval: Duration,
    /// With a store several instances share: how long work an instance holds may wait for
    /// it before any instance takes it over: an abort not recorded this long after the
    /// saga's deadline and grace, an event recorded this long ago and still unsent. Each
    /// instance looks twice per period. Taken-over work runs once more at worst, which the
    /// saga rules make harmless (docs/deployment.md).
    pub takeover_after: Duration,
    /// Whether a step that fails for good (a permanent error, a panic, or transient errors
    /// past its retries; not a rejection) holds its saga rather than aborting it. The event
    /// is dead-lettered with its reason either way; held, it is not recorded as handled,
    /// the saga stays active, and this service keeps a timer at the saga's deadline, so
    /// that the saga times out (rule 8) unless an operator redrives the event
    /// ([`control::RedriveRequested`](crate::control::RedriveRequested)) once its cause is
    /// fixed. Default: `false`, the failure aborts the saga (rule 4).
    pub hold_failed_steps: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            concurrency: 256,
            step_retry: RetryPolicy::default(),
            compensation_retry: RetryPolicy::default().max_attempts(10),
            deadline_grace: Duration::from_secs(1),
            redelivery_delay: Duration::from_millis(200),
            shutdown_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3_600),
            purge_interval: Duration::from_secs(60),
            takeover_after: Duration::from_secs(10),
            hold_failed_steps: false,
        }
    }
}

impl ServiceOptions {
    /// Sets [`concurrency`](Self::concurrency) (at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets [`step_retry`](Self::step_retry).
    pub fn step_retry(mut self, policy: RetryPolicy) -> Self {
        self.step_retry = policy;
        self
    }

    /// Sets [`compensation_retry`](Self::compensation_retry).
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.compensation_retry = policy;
        self
    }

    /// Sets [`deadline_grace`](Self::deadline_grace).
    pub fn deadline_grace(mut self, grace: Duration) -> Self {
        self.deadline_grace = grace;
        self
    }

    /// Sets [`redelivery_delay`](Self::redelivery_delay).
    pub fn redelivery_delay(mut self, delay: Duration) -> Self {
        self.redelivery_delay = delay;
        self
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets [`retention`](Self::retention).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets [`takeover_after`](Self::takeover_after) (at least a millisecond).
    pub fn takeover_after(mut self, after: Duration) -> Self {
        self.takeover_after = after.max(Duration::from_millis(1));
        self
    }

    /// Sets [`purge_interval`](Self::purge_interval) (at least a millisecond).
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets [`hold_failed_steps`](Self::hold_failed_steps).
    pub fn hold_failed_steps(mut self, hold: bool) -> Self {
        self.hold_failed_steps = hold;
        self
    }
}

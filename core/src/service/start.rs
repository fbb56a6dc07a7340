//! Rule 1: a saga starts with a new id and deadline, recorded as the initiator's first step
//! (so its compensation runs if the saga aborts) and published once recorded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::info;

use super::handling::Handling;
use super::runtime::Runtime;
use super::StartError;
use crate::deadline::Deadline;
use crate::envelope::SagaKind;
use crate::event::Event;
use crate::ids::SagaId;
use crate::journal::{CompensationState, SagaRecord, StepRecord};
use crate::saga_data::SagaData;
use crate::store::{Outgoing, OutgoingKind};
use crate::telemetry;
use crate::trace::TraceContext;

/// How a saga starts, besides its first event: its deadline (the saga's default timeout
/// unless set) and its [`SagaData`].
///
/// ```
/// # use std::time::Duration;
/// use choreo_core::{SagaData, SagaStart};
///
/// let start = SagaStart::new()
///     .within(Duration::from_secs(120))
///     .data(SagaData::new().with("card_token", "tok_42")?);
/// # Ok::<(), choreo_core::SagaDataError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct SagaStart {
    deadline: Option<StartDeadline>,
    data: SagaData,
}

#[derive(Debug, Clone, Copy)]
enum StartDeadline {
    Within(Duration),
    Until(Deadline),
}

impl SagaStart {
    /// The saga's default timeout, no saga data.
    pub fn new() -> Self {
        Self::default()
    }

    /// The saga must finish within `timeout` from its start, by the service's clock.
    pub fn within(mut self, timeout: Duration) -> Self {
        self.deadline = Some(StartDeadline::Within(timeout));
        self
    }

    /// The saga must finish by `deadline`.
    pub fn until(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(StartDeadline::Until(deadline));
        self
    }

    /// Every event of the saga carries `data`, and every handler reads it.
    pub fn data(mut self, data: SagaData) -> Self {
        self.data = data;
        self
    }
}

impl Runtime {
    /// The handling that starts a saga with `event` as `how` says, not yet committed.
    pub(super) fn start_as<E: Event>(
        &self,
        event: E,
        how: SagaStart,
    ) -> Result<(SagaId, Handling), StartError> {
        let now = self.now();
        let deadline = match how.deadline {
            None => Deadline::after(now, self.saga().default_timeout()),
            Some(StartDeadline::Within(timeout)) => Deadline::after(now, timeout),
            Some(StartDeadline::Until(deadline)) => deadline,
        };
        self.start(event, now, deadline, how.data)
    }

    /// The handling that starts a saga with `event`, not yet committed.
    fn start<E: Event>(
        &self,
        event: E,
        now: SystemTime,
        deadline: Deadline,
        saga_data: SagaData,
    ) -> Result<(SagaId, Handling), StartError> {
        if !self.definition().initiates.contains(E::TYPE) {
            return Err(StartError::NotInitiator {
                service: self.name().to_owned(),
                event_type: E::TYPE,
            });
        }
        let data =
            serde_json::value::to_raw_value(&event).map_err(|source| StartError::Serialize {
                event_type: E::TYPE,
                source,
            })?;
        let saga_id = SagaId::new();
        let mut start = self.envelope(
            saga_id,
            deadline,
            None,
            TraceContext::new_root(),
            saga_data,
            E::TYPE,
            SagaKind::Start,
            data,
        );
        start.time = now;
        let span = telemetry::start_span(
            self.name(),
            &**self.transport(),
            self.saga().topic(),
            &mut start,
        );
        let mut record = SagaRecord::new(saga_id, deadline);
        record.initiated_here = true;
        let start = Arc::new(start);
        record.steps.push(StepRecord {
            input: None,
            output: Arc::clone(&start),
            withheld: false,
            published: false,
            compensation: CompensationState::Pending,
        });
        info!(parent: &span, service = %self.name(), %saga_id, event_type = E::TYPE, %deadline, "saga started");
        let mut handling = Handling::start(record);
        handling.send(
            Outgoing {
                envelope: start,
                kind: OutgoingKind::Step { position: 0 },
            },
            span,
        );
        Ok((saga_id, handling))
    }

    /// Commits a start and publishes it: the saga is started from here on, even if the
    /// broker takes the event only later.
    pub(super) async fn commit_start(&self, mut handling: Handling) -> Result<(), StartError> {
        if let Some((commit, _)) = handling.prepare(self.name(), self.now()) {
            self.store().commit(vec![commit], None).await?;
        }
        self.started(&handling);
        self.publish_started(&mut handling).await;
        Ok(())
    }

    /// Sends what a committed start recorded. Should the caller stop waiting meanwhile,
    /// the events go to the relay rather than waiting in the store for a restart.
    pub(super) async fn publish_started(&self, handling: &mut Handling) {
        let relay = RelayOnDrop {
            runtime: self,
            outgoing: Some(handling.outgoing()),
        };
        self.committed(handling).await;
        relay.disarm();
    }

    /// What follows a committed start: its timer and its count.
    pub(super) fn started(&self, handling: &Handling) {
        if let Some(record) = handling.record() {
            self.arm_timer(record);
        }
        self.metrics.saga_started();
    }
}

/// Hands `outgoing` to the relay when dropped armed.
struct RelayOnDrop<'a> {
    runtime: &'a Runtime,
    outgoing: Option<Vec<Outgoing>>,
}

impl RelayOnDrop<'_> {
    fn disarm(mut self) {
        self.outgoing = None;
    }
}

impl Drop for RelayOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(outgoing) = self.outgoing.take() {
            // Some may have gone out already: sent again, their consumers drop them.
            self.runtime.outbox().retry(outgoing);
        }
    }
}

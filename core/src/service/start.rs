//! Rule 1: a saga starts with a new id and deadline, recorded as the initiator's first step
//! (so its compensation runs if the saga aborts) and published once recorded.

use std::time::SystemTime;

use tracing::info;

use super::handling::Handling;
use super::runtime::Runtime;
use super::StartError;
use crate::deadline::Deadline;
use crate::envelope::SagaKind;
use crate::event::Event;
use crate::ids::SagaId;
use crate::journal::{CompensationState, SagaRecord, StepRecord};
use crate::store::{Outgoing, OutgoingKind};
use crate::telemetry;
use crate::trace::TraceContext;

impl Runtime {
    /// The handling that starts a saga with `event`, not yet committed.
    pub(super) fn start<E: Event>(
        &self,
        event: E,
        now: SystemTime,
        deadline: Deadline,
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
            E::TYPE,
            SagaKind::Start,
            data,
        );
        start.time = now;
        let span = telemetry::start_span(
            self.name(),
            &**self.transport(),
            self.saga().topic(),
            &start,
        );
        telemetry::stamp(&span, &mut start);
        let mut record = SagaRecord::new(saga_id, deadline);
        record.initiated_here = true;
        record.steps.push(StepRecord {
            input: None,
            output: start.clone(),
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

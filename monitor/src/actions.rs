//! What a person can ask from the console: redrive a dead letter to the service that
//! rejected it, and have a service retry the compensations of a saga that failed for good.
//! Both are control events on the saga's topic (docs/wire-format.md), so the request is in
//! the saga's history.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use choreo_core::control::{redrive_request, retry_request};
use choreo_core::{Deadline, SagaId, Transport};
use serde::{Deserialize, Serialize};

use crate::error::MonitorError;
use crate::time::parse_rfc3339;
use crate::views::Views;

/// What a request published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// The saga.
    pub saga_id: String,
    /// The ids of the control events published, one per service asked.
    pub requests: Vec<String>,
    /// The services asked.
    pub services: Vec<String>,
}

/// Publishes control events for the console.
#[derive(Clone)]
pub struct Actions {
    pub(crate) views: Views,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) topic: String,
    /// Who the requests say asked (e.g. `console`).
    pub(crate) requested_by: String,
}

impl Actions {
    /// Asks every service that dead-lettered `message_id` to handle it again. Refused when
    /// the message is not an event (nothing to redrive: the producer must be fixed), when
    /// no copy names its service, or when its saga has ended or was aborted.
    pub async fn redrive(&self, message_id: &str) -> Result<Requested, MonitorError> {
        let copies = self.views.store.copies(message_id.to_owned()).await?;
        let letter = copies
            .first()
            .ok_or_else(|| MonitorError::NotFound(format!("dead letter {message_id}")))?;
        // A message that did not decode as an event may still name its saga (a header
        // says so); it is refused all the same, as no service would act on it again.
        let not_an_event =
            || MonitorError::Refused("the message is not a choreo event: fix its producer".into());
        if letter.event_type.is_none() {
            return Err(not_an_event());
        }
        let saga_id = letter.saga_id.clone().ok_or_else(not_an_event)?;
        if let Some(saga) = self.views.saga(&saga_id).await? {
            if saga.summary.status.is_ended() {
                return Err(MonitorError::Refused(format!(
                    "saga {saga_id} has ended ({})",
                    saga.summary.status
                )));
            }
            // Its services compensate; none would run a step of it again.
            if let Some(reason) = &saga.summary.abort_reason {
                return Err(MonitorError::Refused(format!(
                    "saga {saga_id} was aborted ({reason}) and is compensating"
                )));
            }
        }
        let mut services: Vec<String> = copies
            .iter()
            .filter(|copy| !copy.service.is_empty())
            .map(|copy| copy.service.clone())
            .collect();
        services.sort();
        services.dedup();
        if services.is_empty() {
            return Err(MonitorError::Refused(
                "no copy of the dead letter names the service that rejected it".to_owned(),
            ));
        }
        let mut requests = Vec::new();
        for service in &services {
            let request = redrive_request(&letter.message, service, &self.requested_by)
                .map_err(|error| MonitorError::Refused(format!("cannot redrive: {error}")))?;
            requests.push(request.id.to_string());
            self.transport
                .publish(&self.topic, request)
                .await
                .map_err(|error| MonitorError::Transport(error.source))?;
        }
        Ok(Requested {
            saga_id,
            requests,
            services,
        })
    }

    /// Asks `service` to run again the compensations of `saga_id` that failed for good.
    /// Refused unless the saga aborted and the service's acknowledgement lists failures.
    pub async fn retry(&self, saga_id: &str, service: &str) -> Result<Requested, MonitorError> {
        let saga = self
            .views
            .saga(saga_id)
            .await?
            .ok_or_else(|| MonitorError::NotFound(format!("saga {saga_id}")))?;
        let failed = saga
            .participants
            .iter()
            .any(|participant| participant.service == service && !participant.failed.is_empty());
        if !failed {
            return Err(MonitorError::Refused(format!(
                "no compensation of {service} failed in saga {saga_id}"
            )));
        }
        let id: SagaId = saga_id
            .parse()
            .map_err(|_| MonitorError::NotFound(format!("saga {saga_id}")))?;
        let deadline_us = parse_rfc3339(&saga.summary.deadline).unwrap_or_default();
        let deadline = Deadline::at(
            UNIX_EPOCH + Duration::from_micros(u64::try_from(deadline_us).unwrap_or_default()),
        );
        let request = retry_request(id, deadline, service, &self.requested_by);
        let request_id = request.id.to_string();
        self.transport
            .publish(&self.topic, request)
            .await
            .map_err(|error| MonitorError::Transport(error.source))?;
        Ok(Requested {
            saga_id: saga_id.to_owned(),
            requests: vec![request_id],
            services: vec![service.to_owned()],
        })
    }
}

//! What a service says about itself when it starts: one `choreo.ServiceDescribed.v1`, in a
//! saga of its own, that every participant ignores (rule 6) and a monitor draws the
//! choreography from.

use std::sync::Arc;

use tracing::{debug, warn};

use super::runtime::{to_raw, Runtime};
use super::Definition;
use crate::control::{ServiceDescribed, StepDescribed};
use crate::deadline::Deadline;
use crate::envelope::SagaKind;
use crate::event::Event;
use crate::ids::SagaId;
use crate::saga::CompensationOrder;
use crate::saga_data::SagaData;
use crate::trace::TraceContext;

/// How many times a service tries to publish its description before it gives up.
const DESCRIBE_ATTEMPTS: u32 = 5;

impl Definition {
    /// The service's description, for its run `instance`; every list sorted, so that two
    /// starts of one definition describe it alike.
    pub(super) fn describe(&self, instance: String) -> ServiceDescribed {
        // A join is registered under each of its parts: described once.
        let mut steps: Vec<StepDescribed> = Vec::new();
        let mut seen: Vec<*const ()> = Vec::new();
        for step in self.steps.values() {
            let identity = Arc::as_ptr(step).cast::<()>();
            if seen.contains(&identity) {
                continue;
            }
            seen.push(identity);
            steps.push(StepDescribed {
                inputs: step.input_types().iter().map(|t| (*t).to_owned()).collect(),
                outputs: sorted(step.output_types().iter().copied()),
            });
        }
        steps.sort_by(|a, b| a.inputs.cmp(&b.inputs));
        ServiceDescribed {
            service: self.name.to_string(),
            version: self.version.clone(),
            instance,
            topic: self.saga.topic().to_owned(),
            steps,
            compensates: sorted(self.compensations.keys().copied()),
            initiates: sorted(self.initiates.iter().copied()),
            terminal: sorted(self.saga.terminal_types()),
            compensation_order: match self.saga.order_of_compensation() {
                CompensationOrder::Parallel => "parallel",
                CompensationOrder::Reverse => "reverse",
            }
            .to_owned(),
        }
    }
}

impl Runtime {
    /// Publishes `description` in a saga of its own; tries again a few times, a redelivery
    /// delay apart, while the broker refuses it, and then lets it be (the service runs all
    /// the same: only a monitor misses it).
    pub(super) async fn publish_description(self: Arc<Self>, description: ServiceDescribed) {
        let data = match to_raw(&description) {
            Ok(data) => data,
            Err(error) => {
                warn!(service = %self.name(), %error, "cannot encode the service's description");
                return;
            }
        };
        let now = self.now();
        let mut envelope = self.envelope(
            SagaId::new(),
            Deadline::after(now, self.saga().default_timeout()),
            None,
            TraceContext::new_root(),
            SagaData::default(),
            ServiceDescribed::TYPE,
            SagaKind::Step,
            data,
        );
        envelope.time = now;
        for attempt in 1..=DESCRIBE_ATTEMPTS {
            let published = tokio::select! {
                biased;
                () = self.stopped() => return,
                published = self.transport().publish(self.saga().topic(), envelope) => published,
            };
            let error = match published {
                Ok(()) => {
                    debug!(service = %self.name(), "described the service");
                    return;
                }
                Err(error) => error,
            };
            envelope = *error.envelope;
            if attempt == DESCRIBE_ATTEMPTS {
                warn!(service = %self.name(), error = %error.source, attempts = attempt, "cannot publish the service's description; giving up (the service runs all the same)");
                return;
            }
            warn!(service = %self.name(), error = %error.source, attempt, "cannot publish the service's description; trying again");
            tokio::select! {
                () = self.stopped() => return,
                () = tokio::time::sleep(self.options().redelivery_delay) => {}
            }
        }
    }
}

fn sorted<'a>(types: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut types: Vec<String> = types.into_iter().map(str::to_owned).collect();
    types.sort_unstable();
    types
}

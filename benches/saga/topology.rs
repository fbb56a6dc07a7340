//! Where the hand-written baselines on a broker send each event and what each service
//! consumes: the shared topology (choreo's on Kafka), or the point-to-point chain a team
//! writes by hand.
//!
//! ```text
//! shared: every event -> the saga's topic -> alpha, beta, gamma (each drops what is not its own)
//! chain:  Placed -> beta -> Reserved -> gamma -> Shipped -> alpha -> Confirmed (-> the caller)
//! ```

/// The event types of the saga, in order; the last one ends it.
const EVENT_TYPES: [&str; 4] = ["Placed", "Reserved", "Shipped", "Confirmed"];

/// The services of the saga.
pub(crate) const SERVICES: [&str; 3] = ["alpha", "beta", "gamma"];

#[derive(Clone)]
pub(crate) enum Topology {
    /// One topic for the saga, which every service consumes whole: choreo's on Kafka, and on
    /// RabbitMQ before it routed by type.
    Shared(String),
    /// One topic (queue) per hop, named after the event type under this prefix; each service
    /// consumes only its own input, and the terminal event goes to a topic of its own for
    /// whoever waits on the saga's end.
    Chain(String),
}

impl Topology {
    /// Every topic events are published to.
    pub(crate) fn topics(&self) -> Vec<String> {
        match self {
            Self::Shared(topic) => vec![topic.clone()],
            Self::Chain(_) => EVENT_TYPES.map(|kind| self.output(kind)).to_vec(),
        }
    }

    /// The topic `service` consumes.
    pub(crate) fn input(&self, service: &str) -> String {
        match self {
            Self::Shared(topic) => topic.clone(),
            Self::Chain(_) => {
                let kind = match service {
                    "beta" => "Placed",
                    "gamma" => "Reserved",
                    "alpha" => "Shipped",
                    other => unreachable!("no service {other} in the saga"),
                };
                self.output(kind)
            }
        }
    }

    /// The topic an event of `event_type` is published to.
    pub(crate) fn output(&self, event_type: &str) -> String {
        match self {
            Self::Shared(topic) => topic.clone(),
            Self::Chain(prefix) => format!("{prefix}.{event_type}"),
        }
    }

    /// The consumer group (Kafka) or queue prefix (RabbitMQ) of `service`.
    pub(crate) fn group(&self, service: &str) -> String {
        match self {
            Self::Shared(_) => format!("raw-{service}"),
            Self::Chain(_) => format!("chain-{service}"),
        }
    }
}

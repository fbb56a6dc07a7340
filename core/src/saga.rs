//! A saga's definition, shared by every participant, and the control events of the runtime.

use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::journal::AbortReason;

/// What every participant of one saga agrees on: its topic, its default timeout and the
/// events that complete it.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct OrderConfirmed {}
/// # impl choreo_core::Event for OrderConfirmed { const TYPE: &'static str = "orders.OrderConfirmed.v1"; }
/// use std::time::Duration;
/// use choreo_core::Saga;
///
/// let saga = Saga::new("orders.saga")
///     .timeout(Duration::from_secs(30))
///     .completes_on::<OrderConfirmed>();
/// assert!(saga.is_terminal("orders.OrderConfirmed.v1"));
/// ```
#[derive(Debug, Clone)]
pub struct Saga {
    inner: Arc<SagaInner>,
}

#[derive(Debug, Clone)]
struct SagaInner {
    topic: String,
    timeout: Duration,
    terminal: HashSet<&'static str>,
    /// Terminal types that one service alone emits, and that service.
    sole_emitters: HashMap<&'static str, Arc<str>>,
    compensation_order: CompensationOrder,
}

/// In what order the participants of an aborted saga compensate (docs/concepts.md, rule 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompensationOrder {
    /// Every participant compensates as soon as the abort reaches it: the fastest.
    #[default]
    Parallel,
    /// A participant compensates only once every participant whose events descend, in the
    /// saga's causation chain, from its newest step has acknowledged the abort: the saga is
    /// undone from its last step back to its first. Every participant of the saga must use
    /// the same order.
    Reverse,
}

impl Saga {
    /// A saga whose events travel on `topic` (e.g. `orders.saga`); default timeout 30 s.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(SagaInner {
                topic: topic.into(),
                timeout: Duration::from_secs(30),
                terminal: HashSet::new(),
                sole_emitters: HashMap::new(),
                compensation_order: CompensationOrder::Parallel,
            }),
        }
    }

    /// The time from start to deadline of sagas started without an explicit deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.inner).timeout = timeout;
        self
    }

    /// Marks `E` as terminal: when it is published, the saga is complete.
    pub fn completes_on<E: Event>(mut self) -> Self {
        Arc::make_mut(&mut self.inner).terminal.insert(E::TYPE);
        self
    }

    /// Marks `E` as terminal, as [`completes_on`](Self::completes_on) does, and says that
    /// `service` alone emits it. `service` then leaves `E` out of what it subscribes to, since
    /// it completes a saga when it commits the event (docs/concepts.md, rule 7): a transport
    /// that routes by type (RabbitMQ, memory) delivers the event to one service fewer, and on
    /// Kafka, whose consumer groups read the whole topic, `service` drops it unhandled.
    /// `service` still subscribes to it if it starts sagas with `E` or compensates in reverse
    /// order. `service` must emit `E`, and any other service whose steps emit `E` refuses to
    /// build, since `service` would never hear of the sagas it completed.
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct OrderConfirmed {}
    /// # impl choreo_core::Event for OrderConfirmed { const TYPE: &'static str = "orders.OrderConfirmed.v1"; }
    /// use choreo_core::Saga;
    ///
    /// let saga = Saga::new("orders.saga").completes_on_from::<OrderConfirmed>("orders");
    /// assert!(saga.is_terminal("orders.OrderConfirmed.v1"));
    /// assert_eq!(saga.sole_emitter("orders.OrderConfirmed.v1"), Some("orders"));
    /// ```
    pub fn completes_on_from<E: Event>(mut self, service: impl Into<String>) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        inner.terminal.insert(E::TYPE);
        inner
            .sole_emitters
            .insert(E::TYPE, Arc::from(service.into()));
        self
    }

    /// The service that alone emits terminal events of `event_type`, if the saga says one
    /// does ([`completes_on_from`](Self::completes_on_from)).
    pub fn sole_emitter(&self, event_type: &str) -> Option<&str> {
        self.inner
            .sole_emitters
            .get(event_type)
            .map(|service| &**service)
    }

    /// Sets the order in which participants compensate an abort; [`CompensationOrder::Parallel`]
    /// unless set.
    pub fn compensation_order(mut self, order: CompensationOrder) -> Self {
        Arc::make_mut(&mut self.inner).compensation_order = order;
        self
    }

    /// The order in which participants compensate an abort.
    pub fn order_of_compensation(&self) -> CompensationOrder {
        self.inner.compensation_order
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The default timeout.
    pub fn default_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Whether events of `event_type` complete the saga.
    pub fn is_terminal(&self, event_type: &str) -> bool {
        self.inner.terminal.contains(event_type)
    }

    /// The terminal event types, sorted.
    pub(crate) fn terminal_types(&self) -> Vec<&'static str> {
        let mut types: Vec<_> = self.inner.terminal.iter().copied().collect();
        types.sort_unstable();
        types
    }

    /// Whether any terminal event is declared.
    pub(crate) fn has_terminal(&self) -> bool {
        !self.inner.terminal.is_empty()
    }
}

/// Published once a saga must abort; every participant compensates (docs/concepts.md, rule 5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaAborted {
    /// Why.
    pub reason: AbortReason,
    /// Details for people: the rejection reason, the error, the deadline.
    pub detail: String,
    /// The service that decided.
    pub service: String,
}

impl Event for SagaAborted {
    const TYPE: &'static str = "choreo.SagaAborted.v1";
}

/// A participant's acknowledgement that it undid its steps of an aborted saga.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaCompensated {
    /// The participant.
    pub service: String,
    /// Types of the step events it compensated, newest first.
    pub compensated: Vec<String>,
    /// Types of the step events whose compensation kept failing and was dead-lettered.
    pub failed: Vec<String>,
}

impl Event for SagaCompensated {
    const TYPE: &'static str = "choreo.SagaCompensated.v1";
}

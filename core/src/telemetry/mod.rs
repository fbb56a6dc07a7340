//! One saga, one trace (docs/observability.md): the spans the runtime opens around every event it sends
//! and handles, the W3C context that joins them across services, and the saga metrics.
//!
//! Spans are [`tracing`] spans with target [`TARGET`]. With `tracing-opentelemetry`'s layer
//! installed (the `choreo::telemetry::init` helper does it) they become OpenTelemetry spans
//! whose attributes follow the messaging semantic conventions:
//!
//! - the initiating publish is the saga's root span (`send <type>`, kind producer);
//! - every publish is a producer span (`send <type>`), whose context travels in the event's
//!   `traceparent`;
//! - every handling is a consumer span (`process <type>`) whose parent is the producer span
//!   of the event it handles, with the handler's own spans and logs inside it;
//! - a compensation is a span (`compensate <type>`) inside the handling of the abort;
//! - a deadline firing is a span (`saga deadline`) in the same trace, linked to the root.
//!
//! Without a subscriber, or without the OpenTelemetry layer, the spans cost next to nothing
//! and events carry the trace context they were caused by.
//!
//! Metrics go to an OpenTelemetry [`Meter`](opentelemetry::metrics::Meter): the global one
//! when the service is built, unless [`ServiceBuilder::meter`](crate::ServiceBuilder::meter)
//! names another. Their names are in [`metrics`].

pub mod metrics;
mod propagation;
mod spans;

pub(crate) use self::metrics::{
    outcome_label, DeadLetterReason, HandlerLabel, Metrics, StepResultLabel,
};
pub(crate) use self::spans::{
    compensation_span, deadline_span, process_span, send_span, stamped_send_span, start_span,
};

/// The `tracing` target of every span and event the runtime records about sagas, for
/// filters such as `RUST_LOG=choreo=info`.
pub const TARGET: &str = "choreo";

/// Span and metric attribute keys of choreo's own (the messaging ones are OpenTelemetry's).
pub mod attributes {
    /// The saga (correlation) id.
    pub const SAGA_ID: &str = "saga.id";
    /// The saga's name: its topic.
    pub const SAGA_NAME: &str = "saga.name";
    /// The event type a span sends or handles, or whose step a compensation undoes.
    pub const SAGA_STEP: &str = "saga.step";
    /// What a message is to its saga: `start`, `step`, `complete`, `abort`, `compensated`.
    pub const SAGA_KIND: &str = "saga.kind";
    /// How a saga ended: `completed`, `compensated` or `timed_out`.
    pub const SAGA_OUTCOME: &str = "saga.outcome";
    /// The service that opened a span or recorded a metric.
    pub const SERVICE: &str = "choreo.service";
}

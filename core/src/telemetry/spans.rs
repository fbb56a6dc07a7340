//! The spans of one saga's events: producer, consumer, compensation and deadline.

use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{remote_parent, span_context, trace_of};
use super::TARGET;
use crate::envelope::Envelope;
use crate::ids::SagaId;
use crate::trace::TraceContext;
use crate::transport::Transport;

/// The producer span of publishing `envelope` to `topic`, a child of the current span.
/// [`stamp`] puts its context on the envelope; a republished event keeps its first one.
pub(crate) fn send_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "send",
        otel.name = format!("send {}", envelope.event_type),
        otel.kind = "producer",
        choreo.service = service,
        messaging.system = transport.name(),
        messaging.destination.name = topic,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.message.id = %envelope.id,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.kind = envelope.kind.as_str(),
    );
    add_transport_attributes(&span, transport, topic, envelope);
    span
}

/// The root span of a saga: the producer span of its initiating event.
pub(crate) fn start_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "send",
        otel.name = format!("send {}", envelope.event_type),
        otel.kind = "producer",
        choreo.service = service,
        messaging.system = transport.name(),
        messaging.destination.name = topic,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.message.id = %envelope.id,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.kind = envelope.kind.as_str(),
        saga.deadline = %envelope.deadline,
    );
    add_transport_attributes(&span, transport, topic, envelope);
    span
}

/// Puts the context of `span` on `envelope`, so the consumers' spans become its children.
/// Without an OpenTelemetry layer the envelope keeps the context it inherited.
pub(crate) fn stamp(span: &Span, envelope: &mut Envelope) {
    if let Some(trace) = trace_of(span) {
        envelope.trace = trace;
    }
}

/// The consumer span of `service` handling `envelope` from `topic`: its parent is the
/// producer span that the envelope's `traceparent` names, and it carries the saga id and
/// trace id into every log line of the handling.
pub(crate) fn process_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "process",
        otel.name = format!("process {}", envelope.event_type),
        otel.kind = "consumer",
        choreo.service = service,
        messaging.system = transport.name(),
        messaging.destination.name = topic,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = %envelope.id,
        messaging.consumer.group.name = service,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.kind = envelope.kind.as_str(),
        saga.outcome = Empty,
        trace_id = envelope.trace.trace_id(),
    );
    if !span.is_disabled() {
        if let Some(parent) = remote_parent(&envelope.trace) {
            // Fails only without an OpenTelemetry layer, when there is no parent to set.
            let _ = span.set_parent(parent);
        }
        add_transport_attributes(&span, transport, topic, envelope);
    }
    span
}

/// The span of undoing the step that emitted `output`, inside the handling of the abort.
pub(crate) fn compensation_span(service: &str, output: &Envelope) -> Span {
    tracing::info_span!(
        target: TARGET,
        "compensate",
        otel.name = format!("compensate {}", output.event_type),
        choreo.service = service,
        saga.id = %output.saga_id,
        saga.step = %output.event_type,
        compensation.result = Empty,
    )
}

/// The span of a saga's deadline firing here: a child of the latest event this service
/// knows of the saga (`latest`), linked to the saga's root (`root`) where known.
pub(crate) fn deadline_span(
    service: &str,
    saga: SagaId,
    latest: &TraceContext,
    root: Option<&TraceContext>,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "deadline",
        otel.name = "saga deadline",
        choreo.service = service,
        saga.id = %saga,
        trace_id = latest.trace_id(),
    );
    if !span.is_disabled() {
        if let Some(parent) = remote_parent(latest) {
            let _ = span.set_parent(parent);
        }
        if let Some(root) = root.and_then(span_context) {
            span.add_link(root);
        }
    }
    span
}

fn add_transport_attributes(
    span: &Span,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) {
    if span.is_disabled() {
        return;
    }
    for attribute in transport.span_attributes(topic, envelope) {
        span.set_attribute(attribute.key, attribute.value);
    }
}

//! The spans of one saga's events: producer, consumer, compensation and deadline.

use opentelemetry::KeyValue;
use tracing::field::{self, Empty};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::attributes::SAGA_KIND;
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
    producer_span(Span::current().id(), service, transport, topic, envelope)
}

/// The root span of a saga: the producer span of its initiating event.
pub(crate) fn start_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    producer_span(None, service, transport, topic, envelope)
}

fn producer_span(
    parent: Option<tracing::Id>,
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: parent,
        "send",
        otel.name = field::display(format_args!("send {}", envelope.event_type)),
        otel.kind = "producer",
        choreo.service = service,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.deadline = %envelope.deadline,
    );
    add_messaging_attributes(&span, transport, topic, envelope, None);
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
        otel.name = field::display(format_args!("process {}", envelope.event_type)),
        otel.kind = "consumer",
        choreo.service = service,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.outcome = Empty,
        trace_id = envelope.trace.trace_id().map(field::display),
    );
    if !span.is_disabled() {
        if let Some(parent) = remote_parent(&envelope.trace) {
            // Fails only without an OpenTelemetry layer, when there is no parent to set.
            let _ = span.set_parent(parent);
        }
        add_messaging_attributes(&span, transport, topic, envelope, Some(service));
    }
    span
}

/// The messaging attributes of the OpenTelemetry semantic conventions, on the OpenTelemetry
/// span only, so that log lines keep to the saga's fields. `group` marks a consumer span.
fn add_messaging_attributes(
    span: &Span,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
    group: Option<&str>,
) {
    if span.is_disabled() {
        return;
    }
    let operation = if group.is_some() { "process" } else { "send" };
    let mut attributes = vec![
        KeyValue::new("messaging.system", transport.name()),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.message.id", envelope.id.to_string()),
        KeyValue::new(SAGA_KIND, envelope.kind.as_str()),
    ];
    if let Some(group) = group {
        attributes.push(KeyValue::new(
            "messaging.consumer.group.name",
            group.to_owned(),
        ));
    }
    attributes.extend(transport.span_attributes(topic, envelope));
    for attribute in attributes {
        span.set_attribute(attribute.key, attribute.value);
    }
}

/// The span of undoing the step that emitted `output`, inside the handling of the abort.
pub(crate) fn compensation_span(service: &str, output: &Envelope) -> Span {
    tracing::info_span!(
        target: TARGET,
        "compensate",
        otel.name = field::display(format_args!("compensate {}", output.event_type)),
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
        trace_id = latest.trace_id().map(field::display),
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

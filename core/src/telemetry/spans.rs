//! The spans of one saga's events: producer, consumer, compensation and deadline.

use opentelemetry::trace::TraceContextExt;
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

/// The producer span of publishing `envelope` to `topic`, a child of the current span: that
/// of an event sent again, which keeps the context of its first send.
pub(crate) fn send_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
) -> Span {
    let span = producer_span(Span::current().id(), service, envelope);
    add_messaging_attributes(&span, transport, topic, envelope, None);
    span
}

/// The producer span of publishing a new `envelope` to `topic`, a child of the current span,
/// whose context the envelope then carries, so that the consumers' spans become its children.
/// Without an OpenTelemetry layer the envelope keeps the context it inherited.
pub(crate) fn stamped_send_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &mut Envelope,
) -> Span {
    stamped(Span::current().id(), service, transport, topic, envelope)
}

/// The root span of a saga: the producer span of its initiating event, whose context the
/// event then carries, as [`stamped_send_span`] does.
pub(crate) fn start_span(
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &mut Envelope,
) -> Span {
    stamped(None, service, transport, topic, envelope)
}

fn stamped(
    parent: Option<tracing::Id>,
    service: &str,
    transport: &dyn Transport,
    topic: &str,
    envelope: &mut Envelope,
) -> Span {
    let span = producer_span(parent, service, envelope);
    let context = add_messaging_attributes(&span, transport, topic, envelope, None);
    if let Some(trace) = context.as_ref().and_then(trace_of) {
        envelope.trace = trace;
    }
    span
}

fn producer_span(parent: Option<tracing::Id>, service: &str, envelope: &Envelope) -> Span {
    tracing::info_span!(
        target: TARGET,
        parent: parent,
        "send",
        otel.name = field::display(format_args!("send {}", envelope.event_type)),
        otel.kind = "producer",
        choreo.service = service,
        saga.id = %envelope.saga_id,
        saga.step = %envelope.event_type,
        saga.deadline = %envelope.deadline,
    )
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

/// Puts the messaging attributes of the OpenTelemetry semantic conventions on the
/// OpenTelemetry span of `span` only, so that log lines keep to the saga's fields, and returns
/// that span's context. `group` marks a consumer span.
///
/// This starts the OpenTelemetry span, whose parent and start time are set by now, and sets
/// the attributes in one call: the `tracing` span's `set_attribute` looks the span up in the
/// subscriber's registry once per attribute.
fn add_messaging_attributes(
    span: &Span,
    transport: &dyn Transport,
    topic: &str,
    envelope: &Envelope,
    group: Option<&str>,
) -> Option<opentelemetry::Context> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    if otel.is_recording() {
        let operation = if group.is_some() { "process" } else { "send" };
        let mut id = uuid::Uuid::encode_buffer();
        let id = envelope.id.as_uuid().hyphenated().encode_lower(&mut id);
        let attributes = [
            KeyValue::new("messaging.system", transport.name()),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.operation.type", operation),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("messaging.message.id", id.to_owned()),
            KeyValue::new(SAGA_KIND, envelope.kind.as_str()),
        ];
        let group =
            group.map(|group| KeyValue::new("messaging.consumer.group.name", group.to_owned()));
        otel.set_attributes(
            attributes
                .into_iter()
                .chain(group)
                .chain(transport.span_attributes(topic, envelope)),
        );
    }
    Some(context)
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

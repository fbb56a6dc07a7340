//! W3C trace context between an event's `traceparent`/`tracestate` and OpenTelemetry.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

use crate::trace::TraceContext;

/// The span an event's trace context names, as a remote span context.
pub(super) fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    let (trace_id, span_id, flags) = trace.ids()?;
    let state = trace
        .tracestate()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The parent context for a span that continues `trace` in this process.
pub(super) fn remote_parent(trace: &TraceContext) -> Option<opentelemetry::Context> {
    span_context(trace).map(|parent| opentelemetry::Context::new().with_remote_span_context(parent))
}

/// The W3C context of the OpenTelemetry span of `context`, if it holds a valid one.
pub(super) fn trace_of(context: &opentelemetry::Context) -> Option<TraceContext> {
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let tracestate = span_context.trace_state().header();
    Some(TraceContext::of_span(
        u128::from_be_bytes(span_context.trace_id().to_bytes()),
        u64::from_be_bytes(span_context.span_id().to_bytes()),
        span_context.trace_flags().to_u8(),
        Some(tracestate.as_str()).filter(|state| !state.is_empty()),
    ))
}

//! W3C trace context between an event's `traceparent`/`tracestate` and OpenTelemetry.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace::TraceContext;

/// The span an event's trace context names, as a remote span context.
pub(super) fn span_context(trace: &TraceContext) -> Option<SpanContext> {
    // A `TraceContext` holds only validated traceparents: `vv-<32 hex>-<16 hex>-<2 hex>`.
    let traceparent = trace.traceparent()?;
    let trace_id = TraceId::from_hex(traceparent.get(3..35)?).ok()?;
    let span_id = SpanId::from_hex(traceparent.get(36..52)?).ok()?;
    let flags = u8::from_str_radix(traceparent.get(53..55)?, 16).ok()?;
    let state = trace
        .tracestate()
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        state,
    ))
}

/// The parent context for a span that continues `trace` in this process.
pub(super) fn remote_parent(trace: &TraceContext) -> Option<opentelemetry::Context> {
    span_context(trace).map(|parent| opentelemetry::Context::new().with_remote_span_context(parent))
}

/// The W3C context of `span`, if an OpenTelemetry layer records it.
pub(super) fn trace_of(span: &Span) -> Option<TraceContext> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags().to_u8()
    );
    let tracestate = Some(span_context.trace_state().header()).filter(|state| !state.is_empty());
    TraceContext::from_parts(Some(traceparent), tracestate).ok()
}

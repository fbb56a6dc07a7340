//! One saga, one trace (docs/observability.md): the order saga's spans and metrics, on every
//! transport.
//!
//! Every span goes to one in-memory exporter behind a global subscriber; each test picks its
//! own spans by saga id, so tests on different transports can run side by side.

mod common;

on_every_transport!(three_sagas_are_three_traces_and_their_outcomes_are_counted);

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use choreo::telemetry::metrics as names;
use choreo::{AbortReason, Event, SagaAborted, SagaCompensated, SagaId, SagaOutcome};
use common::*;
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

struct Tracing {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
}

/// The process-wide subscriber: `tracing` spans to OpenTelemetry to memory.
fn exported() -> &'static InMemorySpanExporter {
    static TRACING: OnceLock<Tracing> = OnceLock::new();
    &TRACING
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("choreo-tests")));
            tracing::subscriber::set_global_default(subscriber).unwrap();
            Tracing {
                exporter,
                _provider: provider,
            }
        })
        .exporter
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// `(service, span name)` of a span.
fn label(span: &SpanData) -> (String, String) {
    (
        attribute(span, "choreo.service").unwrap_or_default(),
        span.name.to_string(),
    )
}

fn spans_of(saga: SagaId) -> Vec<SpanData> {
    let saga = saga.to_string();
    exported()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| attribute(span, "saga.id").as_deref() == Some(&saga))
        .collect()
}

fn labels(spans: &[SpanData]) -> BTreeSet<(String, String)> {
    spans.iter().map(label).collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    pairs
        .iter()
        .map(|(service, name)| ((*service).to_owned(), (*name).to_owned()))
        .collect()
}

fn send(event_type: &str) -> String {
    format!("send {event_type}")
}

fn process(event_type: &str) -> String {
    format!("process {event_type}")
}

/// Waits until the saga's finished spans are exactly `expected` (as labels), then returns
/// them. Spans end after the events that the saga log waits for, so this polls.
async fn spans_when_all_ended(
    h: &Harness,
    saga: SagaId,
    expected: &BTreeSet<(String, String)>,
) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + h.units(100);
    loop {
        let spans = spans_of(saga);
        if labels(&spans) == *expected || tokio::time::Instant::now() > deadline {
            assert_eq!(labels(&spans), *expected, "spans of saga {saga}");
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn one<'a>(spans: &'a [SpanData], service: &str, name: &str) -> &'a SpanData {
    let found: Vec<_> = spans
        .iter()
        .filter(|span| label(span) == (service.to_owned(), name.to_owned()))
        .collect();
    assert!(!found.is_empty(), "no span `{name}` of {service}");
    found[0]
}

/// What every trace of a saga satisfies, whatever its outcome.
fn assert_one_tree(h: &Harness, saga: SagaId, spans: &[SpanData]) -> TraceId {
    let system = h.transport.name();
    let trace = spans[0].span_context.trace_id();
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|span| (span.span_context.span_id(), span))
        .collect();

    // One trace; its only root is the initiating publish.
    let roots: Vec<_> = spans
        .iter()
        .filter(|span| span.parent_span_id == SpanId::INVALID)
        .collect();
    assert_eq!(roots.len(), 1, "roots: {roots:?}");
    assert_eq!(
        label(roots[0]),
        ("orders".to_owned(), send(OrderPlaced::TYPE))
    );
    assert_eq!(roots[0].span_kind, SpanKind::Producer);
    for span in spans {
        assert_eq!(span.span_context.trace_id(), trace, "{:?}", label(span));
        if span.parent_span_id != SpanId::INVALID {
            assert!(
                by_id.contains_key(&span.parent_span_id),
                "the parent of {:?} is not in the saga's trace",
                label(span)
            );
        }
    }

    // Every event on the wire names the producer span that sent it, in the same trace.
    for event in h.log.events(saga) {
        let traceparent = event.trace.traceparent().unwrap();
        assert_eq!(event.trace.trace_id(), Some(&*trace.to_string()));
        let span_id = SpanId::from_hex(&traceparent[36..52]).unwrap();
        let producer = by_id
            .get(&span_id)
            .unwrap_or_else(|| panic!("no span sent {}", event.event_type));
        assert_eq!(producer.span_kind, SpanKind::Producer);
        assert_eq!(
            attribute(producer, "messaging.message.id"),
            Some(event.id.to_string())
        );
    }

    // Each handling's parent is the producer span of the event it handled.
    for consumer in spans.iter().filter(|s| s.span_kind == SpanKind::Consumer) {
        let parent = by_id[&consumer.parent_span_id];
        assert_eq!(
            parent.span_kind,
            SpanKind::Producer,
            "{:?}",
            label(consumer)
        );
        assert_eq!(
            attribute(parent, "messaging.message.id"),
            attribute(consumer, "messaging.message.id")
        );
        assert_eq!(
            attribute(consumer, "messaging.consumer.group.name"),
            attribute(consumer, "choreo.service")
        );
        assert_eq!(
            attribute(consumer, "messaging.operation.type").as_deref(),
            Some("process")
        );
    }

    // The messaging attributes, on every producer and consumer span.
    for span in spans
        .iter()
        .filter(|s| matches!(s.span_kind, SpanKind::Producer | SpanKind::Consumer))
    {
        assert_eq!(attribute(span, "messaging.system").as_deref(), Some(system));
        assert_eq!(
            attribute(span, "messaging.destination.name").as_deref(),
            Some(TOPIC)
        );
        assert!(attribute(span, "messaging.message.id").is_some());
        assert!(attribute(span, "saga.step").is_some());
        let key = match system {
            "kafka" => Some(("messaging.kafka.message.key", saga.to_string())),
            // Routed by type: the topic and the event type sent or handled.
            "rabbitmq" => Some((
                "messaging.rabbitmq.destination.routing_key",
                format!(
                    "{TOPIC}.{}",
                    attribute(span, "saga.step").unwrap_or_default()
                ),
            )),
            _ => None,
        };
        if let Some((key, value)) = key {
            assert_eq!(attribute(span, key), Some(value), "{:?}", label(span));
        }
    }
    for span in spans.iter().filter(|s| s.span_kind == SpanKind::Producer) {
        assert_eq!(
            attribute(span, "messaging.operation.type").as_deref(),
            Some("send")
        );
    }
    trace
}

/// The outcome recorded at the initiator: on the handling that decided it, with a
/// `saga ended` event carrying the duration.
fn assert_outcome(spans: &[SpanData], decided_by: &str, outcome: &str) {
    let decider = one(spans, "orders", decided_by);
    assert_eq!(attribute(decider, "saga.outcome").as_deref(), Some(outcome));
    let ended = decider
        .events
        .events
        .iter()
        .find(|event| event.name == "saga ended")
        .expect("a `saga ended` event");
    assert!(ended
        .attributes
        .iter()
        .any(|kv| kv.key.as_str() == "saga.duration_ms"));
    let others = spans
        .iter()
        .filter(|span| attribute(span, "saga.outcome").is_some())
        .count();
    assert_eq!(others, 1, "only the initiator records the outcome");
}

/// A writer that keeps every log line, for the test that reads them.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_log_line_inside_a_handler_carries_the_saga_id_and_the_trace_id() {
    let lines = Lines::default();
    let writer = lines.clone();
    let logs = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // On this thread only; a current-thread runtime runs every service task here.
    let _default = tracing::subscriber::set_default(logs);

    let h = Harness::start(Backend::MEMORY).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);

    let trace_id = h.log.events(saga)[0].trace.trace_id().unwrap().to_owned();
    let output = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = output
        .lines()
        .find(|line| line.contains("credit reserved"))
        .unwrap_or_else(|| panic!("the handler's line is missing:\n{output}"));
    assert!(line.contains(&format!("saga.id={saga}")), "{line}");
    assert!(line.contains(&format!("trace_id={trace_id}")), "{line}");
    assert!(line.contains(&format!("order_id={order}")), "{line}");
}

async fn three_sagas_are_three_traces_and_their_outcomes_are_counted(backend: Backend) {
    exported();
    let metered = Metered::in_memory();
    let h = Harness::start_metered(backend, Some(metered.meter())).await;
    h.world.set(|b| {
        b.out_of_stock.insert("vinyl".into());
        b.slow_skus.insert("espresso".into(), backend.units(15));
    });

    let (_, completed) = h.place_order(2_500, "book").await;
    let (_, rejected) = h.place_order(2_500, "vinyl").await;
    let (_, timed_out) = h.place_order(2_500, "espresso").await;
    assert_eq!(h.outcome(completed).await, SagaOutcome::Completed);
    assert_eq!(
        h.outcome(rejected).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![]
        }
    );
    assert_eq!(
        h.outcome(timed_out).await,
        SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        }
    );

    // The completed saga: each hop a producer span and the handling of it.
    let confirmed = OrderConfirmed::TYPE;
    let expected = expect(&[
        ("orders", &send(OrderPlaced::TYPE)),
        ("payments", &process(OrderPlaced::TYPE)),
        ("payments", &send(CreditReserved::TYPE)),
        ("inventory", &process(CreditReserved::TYPE)),
        ("inventory", &send(StockReserved::TYPE)),
        ("payments", &process(StockReserved::TYPE)),
        ("payments", &send(PaymentCaptured::TYPE)),
        ("orders", &process(PaymentCaptured::TYPE)),
        ("orders", &send(confirmed)),
        ("orders", &process(confirmed)),
        ("payments", &process(confirmed)),
        ("inventory", &process(confirmed)),
    ]);
    let spans = spans_when_all_ended(&h, completed, &expected).await;
    let completed_trace = assert_one_tree(&h, completed, &spans);
    // Orders emits the terminal event itself: the saga completes there with that step.
    assert_outcome(&spans, &process(PaymentCaptured::TYPE), "completed");

    // The rejected saga: the abort and every compensation in the same trace.
    let (aborted, acknowledged) = (SagaAborted::TYPE, SagaCompensated::TYPE);
    let expected = expect(&[
        ("orders", &send(OrderPlaced::TYPE)),
        ("payments", &process(OrderPlaced::TYPE)),
        ("payments", &send(CreditReserved::TYPE)),
        ("inventory", &process(CreditReserved::TYPE)),
        ("inventory", &send(aborted)),
        ("orders", &process(aborted)),
        ("payments", &process(aborted)),
        ("inventory", &process(aborted)),
        ("orders", &format!("compensate {}", OrderPlaced::TYPE)),
        ("payments", &format!("compensate {}", CreditReserved::TYPE)),
        ("orders", &send(acknowledged)),
        ("payments", &send(acknowledged)),
        ("inventory", &send(acknowledged)),
    ]);
    let spans = spans_when_all_ended(&h, rejected, &expected).await;
    let rejected_trace = assert_one_tree(&h, rejected, &spans);
    assert_outcome(&spans, &process(aborted), "compensated");
    // The abort is sent from inside the rejecting step's handling.
    let abort = one(&spans, "inventory", &send(aborted));
    let rejecting = one(&spans, "inventory", &process(CreditReserved::TYPE));
    assert_eq!(abort.parent_span_id, rejecting.span_context.span_id());
    // A compensation runs inside its service's handling of the abort.
    for (service, undone) in [
        ("orders", OrderPlaced::TYPE),
        ("payments", CreditReserved::TYPE),
    ] {
        let compensation = one(&spans, service, &format!("compensate {undone}"));
        let handling = one(&spans, service, &process(aborted));
        assert_eq!(compensation.parent_span_id, handling.span_context.span_id());
        assert_eq!(
            attribute(compensation, "compensation.result").as_deref(),
            Some("compensated")
        );
    }

    // The saga that timed out: the deadline firing sends the abort, linked to the root.
    let expected = expect(&[
        ("orders", &send(OrderPlaced::TYPE)),
        ("payments", &process(OrderPlaced::TYPE)),
        ("payments", &send(CreditReserved::TYPE)),
        ("inventory", &process(CreditReserved::TYPE)),
        ("orders", "saga deadline"),
        ("orders", &send(aborted)),
        ("orders", &process(aborted)),
        ("payments", &process(aborted)),
        ("inventory", &process(aborted)),
        ("orders", &format!("compensate {}", OrderPlaced::TYPE)),
        ("payments", &format!("compensate {}", CreditReserved::TYPE)),
        ("inventory", &format!("compensate {}", StockReserved::TYPE)),
        ("orders", &send(acknowledged)),
        ("payments", &send(acknowledged)),
        ("inventory", &send(acknowledged)),
    ]);
    let spans = spans_when_all_ended(&h, timed_out, &expected).await;
    let timed_out_trace = assert_one_tree(&h, timed_out, &spans);
    assert_outcome(&spans, &process(aborted), "timed_out");
    let root = one(&spans, "orders", &send(OrderPlaced::TYPE));
    let deadline = one(&spans, "orders", "saga deadline");
    assert_eq!(
        deadline
            .links
            .links
            .iter()
            .map(|link| link.span_context.span_id())
            .collect::<Vec<_>>(),
        [root.span_context.span_id()]
    );
    let abort = one(&spans, "orders", &send(aborted));
    assert_eq!(abort.parent_span_id, deadline.span_context.span_id());

    let traces: HashSet<_> = [completed_trace, rejected_trace, timed_out_trace].into();
    assert_eq!(traces.len(), 3, "each saga is a trace of its own");

    // Metrics: the initiator counts sagas by outcome; each service its own work.
    let count = |name: &str, attributes: &[(&str, &str)]| metered.count(name, attributes);
    assert_eq!(
        count(names::SAGAS_STARTED, &[("choreo.service", "orders")]),
        3
    );
    assert_eq!(count(names::SAGAS_STARTED, &[]), 3);
    for outcome in ["completed", "compensated", "timed_out"] {
        let by_outcome = [("choreo.service", "orders"), ("saga.outcome", outcome)];
        assert_eq!(count(names::SAGAS_ENDED, &by_outcome), 1, "{outcome}");
        assert_eq!(count(names::SAGA_DURATION, &by_outcome), 1, "{outcome}");
    }
    assert_eq!(count(names::SAGAS_ENDED, &[]), 3);
    let step = |service, step, result| {
        count(
            names::STEP_DURATION,
            &[
                ("choreo.service", service),
                ("saga.step", step),
                ("choreo.step.result", result),
            ],
        )
    };
    assert_eq!(step("payments", OrderPlaced::TYPE, "done"), 3);
    assert_eq!(step("inventory", CreditReserved::TYPE, "done"), 2);
    assert_eq!(step("inventory", CreditReserved::TYPE, "rejected"), 1);
    assert_eq!(step("payments", StockReserved::TYPE, "done"), 1);
    assert_eq!(step("orders", PaymentCaptured::TYPE, "done"), 1);
    assert_eq!(count(names::STEP_DURATION, &[]), 8);
    let compensated = |service| {
        count(
            names::COMPENSATIONS,
            &[
                ("choreo.service", service),
                ("choreo.compensation.result", "compensated"),
            ],
        )
    };
    assert_eq!(compensated("orders"), 2);
    assert_eq!(compensated("payments"), 2);
    assert_eq!(compensated("inventory"), 1);
    assert_eq!(count(names::COMPENSATIONS, &[]), 5);
    assert_eq!(count(names::DEAD_LETTERS, &[]), 0);
    assert_eq!(count(names::HANDLER_ERRORS, &[]), 0);
    assert_eq!(count(names::RETRIES, &[]), 0);
}

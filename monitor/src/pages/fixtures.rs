//! For the tests: model values built by hand.

use serde_json::json;

use crate::model::{
    DeadLetter, DeadLetterCopy, Edge, EventRecord, Graph, Participant, Problem, SagaDetail,
    SagaSummary, ServiceNode, Status, StuckReason,
};
use choreo_core::control::{ServiceDescribed, StepDescribed};

pub(crate) const SAGA: &str = "0190b5c2-0000-7000-8000-00000000abcd";

/// One event of the saga [`SAGA`], which started at 2025-01-01T10:00:00Z.
pub(crate) fn event(
    id: &str,
    source: &str,
    kind: &str,
    event_type: &str,
    offset_ms: i64,
    causation: Option<&str>,
    data: serde_json::Value,
) -> EventRecord {
    EventRecord {
        id: id.to_owned(),
        saga_id: SAGA.to_owned(),
        event_type: event_type.to_owned(),
        source: source.to_owned(),
        kind: kind.to_owned(),
        time: format!(
            "2025-01-01T10:00:{:02}.{:03}Z",
            offset_ms / 1000,
            offset_ms % 1000
        ),
        offset_ms,
        causation_id: causation.map(str::to_owned),
        deadline: "2025-01-01T10:00:30Z".to_owned(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        data,
        saga_data: json!({}),
    }
}

pub(crate) fn summary(status: Status) -> SagaSummary {
    SagaSummary {
        saga_id: SAGA.to_owned(),
        status,
        stuck: Vec::new(),
        started_with: Some("orders.OrderPlaced.v1".to_owned()),
        started_by: Some("orders".to_owned()),
        started_at: "2025-01-01T10:00:00Z".to_owned(),
        deadline: "2025-01-01T10:00:30Z".to_owned(),
        time_left_ms: None,
        ended_at: None,
        duration_ms: None,
        abort_reason: None,
        abort_detail: None,
        events: 0,
        dead_letters: 0,
    }
}

pub(crate) fn participant(service: &str, acknowledged: bool, compensated: &[&str]) -> Participant {
    Participant {
        service: service.to_owned(),
        acknowledged,
        compensated: compensated.iter().map(|t| (*t).to_owned()).collect(),
        failed: Vec::new(),
    }
}

/// orders starts, payments rejects, both acknowledge.
pub(crate) fn rejected() -> SagaDetail {
    let events = vec![
        event(
            "e1",
            "orders",
            "start",
            "orders.OrderPlaced.v1",
            0,
            None,
            json!({"order_id": "o-1", "total": 120}),
        ),
        event(
            "e2",
            "payments",
            "abort",
            "choreo.SagaAborted.v1",
            12,
            Some("e1"),
            json!({"reason": "rejected", "detail": "out of credit", "service": "payments"}),
        ),
        event(
            "e3",
            "orders",
            "compensated",
            "choreo.SagaCompensated.v1",
            20,
            Some("e2"),
            json!({"service": "orders", "compensated": ["orders.OrderPlaced.v1"], "failed": []}),
        ),
        event(
            "e4",
            "payments",
            "compensated",
            "choreo.SagaCompensated.v1",
            25,
            Some("e2"),
            json!({"service": "payments", "compensated": [], "failed": []}),
        ),
    ];
    let mut summary = summary(Status::Compensated);
    summary.events = events.len();
    summary.ended_at = Some("2025-01-01T10:00:00.025Z".to_owned());
    summary.duration_ms = Some(25);
    summary.abort_reason = Some("rejected".to_owned());
    summary.abort_detail = Some("out of credit".to_owned());
    SagaDetail {
        summary,
        participants: vec![
            participant("orders", true, &["orders.OrderPlaced.v1"]),
            participant("payments", true, &[]),
        ],
        events,
        dead_letters: Vec::new(),
        expected: Vec::new(),
    }
}

/// A dead letter of the saga [`SAGA`], rejected by `service`.
pub(crate) fn dead_letter(id: &str, service: &str) -> DeadLetter {
    DeadLetter {
        id: id.to_owned(),
        saga_id: Some(SAGA.to_owned()),
        event_type: Some("payments.CreditReserved.v1".to_owned()),
        source: Some("payments".to_owned()),
        topic: "orders.saga".to_owned(),
        copies: vec![DeadLetterCopy {
            service: Some(service.to_owned()),
            reason: "permanent: <bad> stock & \"item\"".to_owned(),
            recorded_at: "2025-01-01T10:00:01Z".to_owned(),
        }],
        body: r#"{"order_id":"o-1"}"#.to_owned(),
        redriven_at: None,
    }
}

/// Stuck with a dead letter; inventory's compensation of a step failed.
pub(crate) fn stuck() -> SagaDetail {
    let mut detail = rejected();
    detail.summary.status = Status::Stuck;
    detail.summary.stuck = vec![StuckReason::DeadLetter, StuckReason::CompensationOverdue];
    detail.summary.duration_ms = None;
    detail.summary.ended_at = None;
    detail.summary.time_left_ms = Some(-4_000);
    detail.participants.push(Participant {
        service: "inventory".to_owned(),
        acknowledged: true,
        compensated: Vec::new(),
        failed: vec!["inventory.StockReserved.v1".to_owned()],
    });
    detail
        .participants
        .push(participant("shipping", false, &[]));
    detail.events.insert(
        1,
        event(
            "e5",
            "inventory",
            "step",
            "inventory.StockReserved.v1",
            5,
            Some("e1"),
            json!({"sku": "<b>x</b>"}),
        ),
    );
    detail.events.push(event(
        "e6",
        "inventory",
        "compensated",
        "choreo.SagaCompensated.v1",
        31_000,
        Some("e2"),
        json!({"service": "inventory", "compensated": [], "failed": ["inventory.StockReserved.v1"]}),
    ));
    detail.events.push(event(
        "e7",
        "shipping",
        "step",
        "shipping.Labelled.v1",
        31_500,
        Some("e5"),
        json!(null),
    ));
    detail.dead_letters = vec![dead_letter("d1", "shipping")];
    detail.expected =
        vec!["shipping: inventory.StockReserved.v1 -> shipping.Shipped.v1".to_owned()];
    detail.summary.events = detail.events.len();
    detail
}

fn node(
    service: &str,
    version: &str,
    steps: &[(&[&str], &[&str])],
    initiates: &[&str],
) -> ServiceNode {
    ServiceNode {
        description: ServiceDescribed {
            service: service.to_owned(),
            version: version.to_owned(),
            instance: format!("{service}-1"),
            topic: "orders.saga".to_owned(),
            steps: steps
                .iter()
                .map(|(inputs, outputs)| StepDescribed {
                    inputs: inputs.iter().map(|t| (*t).to_owned()).collect(),
                    outputs: outputs.iter().map(|t| (*t).to_owned()).collect(),
                })
                .collect(),
            compensates: Vec::new(),
            initiates: initiates.iter().map(|t| (*t).to_owned()).collect(),
            terminal: vec!["shipping.Shipped.v1".to_owned()],
            compensation_order: "parallel".to_owned(),
        },
        described_at: "2025-01-01T09:00:00Z".to_owned(),
        versions: vec![version.to_owned()],
    }
}

fn edge(from: &str, event_type: &str, to: Option<&str>) -> Edge {
    Edge {
        from: from.to_owned(),
        event_type: event_type.to_owned(),
        to: to.map(str::to_owned),
    }
}

/// orders → payments → shipping → end, with payments also emitting a misspelt type.
pub(crate) fn graph() -> Graph {
    let mut payments = node(
        "payments",
        "1.1",
        &[(
            &["orders.OrderPlaced.v1"],
            &["payments.CreditReserved.v1", "payments.Typo.v1"],
        )],
        &[],
    );
    payments.versions = vec!["1.0".to_owned(), "1.1".to_owned()];
    Graph {
        services: vec![
            node("orders", "1.0", &[], &["orders.OrderPlaced.v1"]),
            payments,
            node(
                "shipping",
                "2.0",
                &[(&["payments.CreditReserved.v1"], &["shipping.Shipped.v1"])],
                &[],
            ),
        ],
        edges: vec![
            edge("orders", "orders.OrderPlaced.v1", Some("payments")),
            edge("payments", "payments.CreditReserved.v1", Some("shipping")),
            edge("payments", "payments.Typo.v1", None),
            edge("shipping", "shipping.Shipped.v1", None),
        ],
        problems: vec![
            Problem::Unconsumed {
                event_type: "payments.Typo.v1".to_owned(),
                emitted_by: "payments".to_owned(),
            },
            Problem::TwoVersions {
                service: "payments".to_owned(),
                versions: vec!["1.0".to_owned(), "1.1".to_owned()],
            },
        ],
    }
}

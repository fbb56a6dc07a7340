//! Hostile input on the saga topic, on each transport: messages no well-behaved producer
//! sends, each dead-lettered by every service with its reason or handled as the saga rules
//! say (docs/concepts.md), while the services go on with the sagas behind them.

mod common;

use std::time::{Duration, SystemTime};

use choreo::transport::{DEAD_LETTER_ORIGINAL_SIZE_HEADER, DEAD_LETTER_TRUNCATED_HEADER};
use choreo::{
    AbortReason, Deadline, Envelope, Event, RawMessage, SagaId, SagaKind, SagaOutcome, SagaRecord,
    SagaStatus,
};
use common::*;
use serde::{Deserialize, Serialize};

scenarios! {
    memory: [hostile_events_are_dead_lettered_or_handled_by_the_rules_and_sagas_go_on];
    kafka: [hostile_events_are_dead_lettered_or_handled_by_the_rules_and_sagas_go_on];
    rabbitmq: [hostile_events_are_dead_lettered_or_handled_by_the_rules_and_sagas_go_on];
}

/// An order's start as a producer outside the example would publish it.
fn stranger_start(h: &Harness, order_id: u64, deadline: Deadline) -> Envelope {
    let order = OrderPlaced {
        order_id,
        amount_cents: 2_500,
        sku: "book".into(),
    };
    h.event("stranger", SagaId::new(), deadline, SagaKind::Start, &order)
}

/// `service`'s record of `saga` once every event it emitted is marked sent, after which it no
/// longer changes: the service that emits the terminal event finishes the saga in the commit
/// that records the event, and marks it sent only once it went out.
async fn final_record(h: &Harness, service: &'static str, saga: SagaId) -> SagaRecord {
    let until = tokio::time::Instant::now() + h.units(100);
    let record = async |service, saga| h.record(service, saga).await;
    record_when(
        service,
        saga,
        until,
        record,
        "marked every event sent in",
        |record| {
            record
                .steps
                .iter()
                .all(|step| step.published || step.withheld)
        },
    )
    .await
}

/// `message` without its header `name`.
fn without(mut message: RawMessage, name: &str) -> RawMessage {
    message.headers.retain(|key, _| key != name);
    message
}

/// Every header of the message with a value that is not UTF-8, or only its source; a message
/// with a header twice; one without its saga id; two messages of 10 MiB ([`TenMebibytes`]);
/// a start whose deadline is in the year 9999 (a saga like any other: it completes, behind
/// the two large messages on their partition); one whose deadline was in 1970 (past the
/// retention: ignored) and then an abort of that saga (a saga nobody knows: each service
/// records that it ended and acknowledges). Behind them all, an order placed as usual
/// completes; then a start of another saga whose data names that order runs as a saga of its
/// own.
async fn hostile_events_are_dead_lettered_or_handled_by_the_rules_and_sagas_go_on(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let far = h.next_order_id() + 1_000;
    let mut malformed: Vec<(RawMessage, &str)> = Vec::new();

    let mut not_utf8 = stranger_start(&h, far, h.deadline_in(backend.timeout())).to_binary();
    not_utf8.headers = not_utf8
        .headers
        .iter()
        .map(|(name, _)| (name, b"\xff\xfe not UTF-8 \xc3\x28"))
        .collect();
    malformed.push((not_utf8, "is invalid: not UTF-8"));
    let mut source_not_utf8 =
        stranger_start(&h, far + 5, h.deadline_in(backend.timeout())).to_binary();
    source_not_utf8.headers = source_not_utf8
        .headers
        .iter()
        .map(|(name, value)| match name {
            "ce_source" => (name, &b"\xffstranger"[..]),
            _ => (name, value),
        })
        .collect();
    malformed.push((source_not_utf8, "attribute `source` is invalid: not UTF-8"));
    malformed.push((
        without(
            stranger_start(&h, far + 1, h.deadline_in(backend.timeout())).to_binary(),
            "ce_sagaid",
        ),
        "missing required attribute `sagaid`",
    ));
    // An AMQP header table holds each name once: RabbitMQ cannot carry a duplicate.
    #[cfg(feature = "rabbitmq")]
    let carries_duplicates = backend.via != Via::RabbitMq;
    #[cfg(not(feature = "rabbitmq"))]
    let carries_duplicates = true;
    if carries_duplicates {
        let mut twice = stranger_start(&h, far + 2, h.deadline_in(backend.timeout())).to_binary();
        twice.headers.push("ce_type", b"inventory.StockReserved.v1");
        malformed.push((twice, "attribute `type` appears more than once"));
    }
    for (message, _) in &malformed {
        h.publish_raw(TOPIC, None, message.clone()).await;
    }

    let year_9999 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    let lasting = stranger_start(&h, far + 3, Deadline::at(year_9999));
    let large = TenMebibytes::publish_ahead_of(&h, lasting.saga_id, far + 6).await;
    h.publish(lasting.clone()).await;

    let year_1970 = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
    let ancient = stranger_start(&h, far + 4, Deadline::at(year_1970));
    h.publish(ancient.clone()).await;
    let unknown = ancient.saga_id;
    h.publish(h.abort_event(
        unknown,
        h.deadline_in(backend.timeout()),
        AbortReason::Rejected,
    ))
    .await;

    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.flow(saga), completed_flow());
    assert_eq!(h.effects(order).await, every_forward_step_once(order));

    // A start of another saga whose data names this order: sagas are told apart by their
    // `sagaid` attribute alone, never by data, so it runs as a saga of its own (the business
    // effects are applied again, for the application to reconcile) and leaves this one's
    // records as they were.
    h.settled(saga).await;
    let mut records = Vec::new();
    for service in SERVICES {
        records.push(Some(final_record(&h, service, saga).await));
    }
    let posing = stranger_start(&h, order, h.deadline_in(backend.timeout()));
    h.publish(posing.clone()).await;
    assert_eq!(h.outcome(posing.saga_id).await, SagaOutcome::Completed);
    h.settled(posing.saga_id).await;
    assert_eq!(h.flow(posing.saga_id)[0], ev("stranger", OrderPlaced::TYPE));
    assert_eq!(h.flow(posing.saga_id)[1..], completed_flow()[1..]);
    let again = every_forward_step_once(order);
    assert_eq!(
        h.effects(order).await,
        [again.clone(), again[1..].to_vec()].concat()
    );
    for (service, before) in SERVICES.into_iter().zip(records) {
        assert_eq!(h.record(service, saga).await, before, "{service}");
        let posed = h.record(service, posing.saga_id).await.unwrap();
        assert_eq!(posed.status, SagaStatus::Completed, "{service}");
    }

    // Each service dead-lettered each malformed message once, saying why.
    let dead_lettered = (malformed.len() + 1) * SERVICES.len();
    let letters = h.dead_letters(dead_lettered).await;
    large.check(&h, &letters).await;
    for (message, reason) in &malformed {
        let of_it: Vec<_> = letters
            .iter()
            .filter(|letter| letter.body == message.body)
            .collect();
        assert_eq!(of_it.len(), SERVICES.len(), "{reason}: {letters:?}");
        for letter in of_it {
            assert!(
                letter.reason.starts_with("malformed event: ") && letter.reason.contains(reason),
                "{}",
                letter.reason
            );
        }
    }

    // The year-9999 saga is a saga like any other, with its deadline kept.
    assert_eq!(h.outcome(lasting.saga_id).await, SagaOutcome::Completed);
    h.settled(lasting.saga_id).await;
    assert_eq!(
        h.flow(lasting.saga_id),
        [
            ev("stranger", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("payments", PaymentCaptured::TYPE),
            ev("orders", OrderConfirmed::TYPE),
        ]
    );
    assert_eq!(
        h.effects(far + 3).await,
        every_forward_step_once(far + 3)[1..]
    );
    for service in SERVICES {
        let record = h.record(service, lasting.saga_id).await.unwrap();
        assert_eq!(
            (record.status, record.deadline),
            (SagaStatus::Completed, Deadline::at(year_9999)),
            "{service}"
        );
    }

    // The 1970 start did nothing anywhere; the abort of its saga left each service a record
    // that it ended, with no step, and an acknowledgement.
    assert_eq!(h.outcome(unknown).await, compensated(AbortReason::Rejected));
    h.settled(unknown).await;
    let flow = h.flow(unknown);
    assert_eq!(
        flow[..2],
        [ev("stranger", OrderPlaced::TYPE), ev("tester", ABORTED)]
    );
    assert_eq!(sorted(flow[2..].to_vec()), every_acknowledgement());
    assert_eq!(h.effects(far + 4).await, []);
    // Nothing else was dead-lettered: not the 10 MiB export, not the year-9999 saga, not the
    // 1970 start, not the abort of a saga nobody knew.
    assert_eq!(h.dead_letters(0).await.len(), dead_lettered);
    for service in SERVICES {
        let record = h.record(service, unknown).await.unwrap();
        assert_eq!(
            (record.status, record.steps.len()),
            (
                SagaStatus::Aborted {
                    reason: AbortReason::Rejected
                },
                0
            ),
            "{service}"
        );
    }
    for (ack_service, ack) in acknowledgements(&h, unknown) {
        assert_eq!(
            (ack.compensated, ack.failed),
            (vec![], vec![]),
            "{ack_service}"
        );
    }
}

/// Ten mebibytes.
const TEN_MIB: usize = 10 * 1024 * 1024;

/// An event no service of the order saga handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CatalogueExported {
    catalogue: String,
}

impl Event for CatalogueExported {
    const TYPE: &'static str = "marketing.CatalogueExported.v1";
}

/// Two messages of 10 MiB from a producer outside the example: an order start whose data was
/// cut off mid-upload (10 MiB that are not JSON: a malformed event, which each service
/// dead-letters with its reason, docs/concepts.md), and a well-formed event of 10 MiB of a
/// type no service handles (acknowledged and dropped by each).
struct TenMebibytes {
    cut_off: RawMessage,
    export: Envelope,
}

impl TenMebibytes {
    /// Publishes both with the Kafka key of `saga` (ahead of its events on their partition,
    /// which the services reach only past the two).
    async fn publish_ahead_of(h: &Harness, saga: SagaId, order_id: u64) -> Self {
        let deadline = h.deadline_in(h.backend.timeout());
        let key = saga.to_string();
        let mut cut_off = stranger_start(h, order_id, deadline).to_binary();
        cut_off.body =
            format!(r#"{{"order_id":{order_id},"amount_cents":2500,"sku":""#).into_bytes();
        cut_off.body.resize(TEN_MIB, b'x');
        h.publish_raw(TOPIC, Some(&key), cut_off.clone()).await;
        let export = h.event(
            "marketing",
            SagaId::new(),
            deadline,
            SagaKind::Start,
            &CatalogueExported {
                catalogue: "x".repeat(TEN_MIB),
            },
        );
        h.publish_raw(TOPIC, Some(&key), export.to_binary()).await;
        Self { cut_off, export }
    }

    /// Each service dead-lettered the cut-off start once, with its reason: whole, or on Kafka,
    /// whose producer takes 1 000 000 bytes at most, cut to fit and saying so (its headers
    /// kept); and none has a record of the export's saga.
    async fn check(&self, h: &Harness, letters: &[DeadLetter]) {
        #[cfg(feature = "kafka")]
        let cut_to_fit = h.backend.via == Via::Kafka;
        #[cfg(not(feature = "kafka"))]
        let cut_to_fit = false;
        let of_it: Vec<_> = letters
            .iter()
            .filter(|letter| letter.message.header("ce_id") == self.cut_off.header("ce_id"))
            .collect();
        assert_eq!(of_it.len(), SERVICES.len(), "{letters:?}");
        for letter in of_it {
            assert!(
                letter
                    .reason
                    .starts_with("malformed event: data is not valid JSON: EOF while parsing"),
                "{letter:?}"
            );
            if cut_to_fit {
                assert!(
                    (990_000..1_000_000).contains(&letter.body.len()),
                    "{letter:?}"
                );
                assert!(self.cut_off.body.starts_with(&letter.body), "{letter:?}");
                assert_eq!(letter.message.headers, self.cut_off.headers);
                assert_eq!(letter.mark(DEAD_LETTER_TRUNCATED_HEADER), Some("body"));
                assert_eq!(
                    letter.mark(DEAD_LETTER_ORIGINAL_SIZE_HEADER),
                    Some(TEN_MIB.to_string().as_str())
                );
            } else {
                assert!(letter.body == self.cut_off.body, "{letter:?}");
                assert_eq!(letter.mark(DEAD_LETTER_TRUNCATED_HEADER), None);
            }
        }
        for service in SERVICES {
            assert!(
                h.record(service, self.export.saga_id).await.is_none(),
                "{service}"
            );
        }
    }
}

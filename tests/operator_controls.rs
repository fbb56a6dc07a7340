//! What the runtime offers an operator (docs/wire-format.md, "The runtime's own events"):
//! each service describes itself when it starts, names itself and the saga on its dead
//! letters, holds a saga whose step failed for good when told to, redrives a dead-lettered
//! event on request, and retries the compensations of an aborted saga that failed for good.

mod common;

scenarios! {
    memory: [
        every_service_describes_itself_once_when_it_starts_and_every_service_ignores_it,
        a_dead_letter_names_the_service_and_the_saga,
        a_held_step_redriven_once_fixed_completes_the_saga,
        a_held_step_nobody_redrives_times_out_and_a_later_redrive_does_nothing,
        a_redrive_of_an_event_handled_already_does_nothing,
        a_redrive_request_for_another_saga_is_dead_lettered,
        a_failed_compensation_retried_once_fixed_runs_once_and_is_acknowledged,
    ];
    memory_sqlite: [
        a_held_step_redriven_once_fixed_completes_the_saga,
        a_held_step_nobody_redrives_times_out_and_a_later_redrive_does_nothing,
        a_failed_compensation_retried_once_fixed_runs_once_and_is_acknowledged,
    ];
}

use std::collections::HashMap;

use choreo::control::{
    self, CompensationRetryRequested, RedriveRequested, ServiceDescribed, StepDescribed,
    DEAD_LETTER_SAGA_HEADER, DEAD_LETTER_SERVICE_HEADER,
};
use choreo::journal::CompensationState;
use choreo::{
    AbortReason, BuildError, Context, Envelope, Event, HandlerError, Saga, SagaCompensated,
    SagaKind, SagaOutcome, SagaStatus, Service, Step, StepResult, Subscription,
};
use common::*;

/// The descriptions published on the saga's topic, by service, as an observer reads them.
async fn descriptions(mut observer: Box<dyn Subscription>) -> HashMap<String, Envelope> {
    let mut found = HashMap::new();
    while found.len() < SERVICES.len() {
        let delivery = observer.next().await.unwrap();
        let event = Envelope::decode(&delivery.message).unwrap();
        if event.event_type == ServiceDescribed::TYPE {
            let described: ServiceDescribed = data(&event);
            assert!(
                found.insert(described.service.clone(), event).is_none(),
                "{} described itself twice",
                described.service
            );
        }
        delivery.ack().await.unwrap();
    }
    found
}

fn types(types: &[&str]) -> Vec<String> {
    types.iter().map(|t| (*t).to_owned()).collect()
}

fn step(inputs: &[&str], outputs: &[&str]) -> StepDescribed {
    StepDescribed {
        inputs: types(inputs),
        outputs: types(outputs),
    }
}

async fn every_service_describes_itself_once_when_it_starts_and_every_service_ignores_it(
    backend: Backend,
) {
    let mut h = Harness::prepare(backend).await;
    let observer = h
        .transport
        .observe("descriptions", &[TOPIC.to_owned()])
        .await
        .unwrap();
    let reading = tokio::spawn(descriptions(observer));
    h.start_all().await;
    let described = reading.await.unwrap();

    let terminal = types(&[OrderBackordered::TYPE, OrderConfirmed::TYPE]);
    let expected = HashMap::from([
        (
            "orders",
            (
                vec![
                    step(&[StockBackordered::TYPE], &[OrderBackordered::TYPE]),
                    step(&[PaymentCaptured::TYPE], &[OrderConfirmed::TYPE]),
                ],
                types(&[OrderPlaced::TYPE]),
                types(&[OrderPlaced::TYPE]),
            ),
        ),
        (
            "payments",
            (
                vec![
                    step(&[StockReserved::TYPE], &[PaymentCaptured::TYPE]),
                    step(&[OrderPlaced::TYPE], &[CreditReserved::TYPE]),
                ],
                types(&[CreditReserved::TYPE, PaymentCaptured::TYPE]),
                vec![],
            ),
        ),
        (
            "inventory",
            (
                vec![step(
                    &[CreditReserved::TYPE],
                    &[StockBackordered::TYPE, StockReserved::TYPE],
                )],
                types(&[StockBackordered::TYPE, StockReserved::TYPE]),
                vec![],
            ),
        ),
    ]);
    let mut sagas = Vec::new();
    for service in SERVICES {
        let event = &described[service];
        let description: ServiceDescribed = data(event);
        let (steps, compensates, initiates) = expected[service].clone();
        assert!(uuid::Uuid::parse_str(&description.instance).is_ok());
        assert_eq!(
            description,
            ServiceDescribed {
                service: service.to_owned(),
                version: "unknown".to_owned(),
                instance: description.instance.clone(),
                topic: TOPIC.to_owned(),
                steps,
                compensates,
                initiates,
                terminal: terminal.clone(),
                compensation_order: "parallel".to_owned(),
            }
        );
        // The pure description of the service built the same way says the same.
        let built = h.service(service, h.options()).await.description();
        assert_eq!(
            built,
            ServiceDescribed {
                instance: String::new(),
                ..description
            }
        );
        // A saga of its own: a step event with no cause, from the service, on a fresh trace.
        assert_eq!(event.source, service);
        assert_eq!(event.kind, SagaKind::Step);
        assert_eq!(event.causation_id, None);
        assert_eq!(event.deadline.instant(), event.time + backend.timeout());
        assert!(event.trace.trace_id().is_some());
        sagas.push(event.saga_id);
    }
    sagas.sort();
    sagas.dedup();
    assert_eq!(sagas.len(), SERVICES.len(), "one saga each");

    // Every service acknowledged every description and kept nothing of it; a saga runs
    // on as before, and the saga log shows only it.
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.flow(saga), completed_flow());
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    h.settled(saga).await;
    assert_eq!(h.log.sagas(), [saga]);
    for service in SERVICES {
        assert_eq!(h.pending(TOPIC, service), Some(0), "{service}");
        for event in described.values() {
            assert_eq!(h.record(service, event.saga_id).await, None, "{service}");
            assert!(!h.handled(service, event).await, "{service}");
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, choreo::Event)]
#[event(name = "flights.FlightBooked.v1")]
struct FlightBooked {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, choreo::Event)]
#[event(name = "hotels.HotelBooked.v1")]
struct HotelBooked {}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, choreo::Event)]
#[event(name = "payments.TripPaid.v1")]
struct TripPaid {}

#[test]
fn a_join_is_described_once_with_every_part_and_the_version_given() {
    async fn pay(_: (FlightBooked, HotelBooked), _: Context) -> StepResult<TripPaid> {
        Ok(Step::done(TripPaid {}))
    }
    let saga = Saga::new("trips.saga")
        .completes_on::<TripPaid>()
        .compensation_order(choreo::CompensationOrder::Reverse);
    let payments = Service::builder("payments", &saga)
        .version("2.3.1")
        .join(pay)
        .build()
        .unwrap();
    assert_eq!(
        payments.description(),
        ServiceDescribed {
            service: "payments".into(),
            version: "2.3.1".into(),
            instance: String::new(),
            topic: "trips.saga".into(),
            steps: vec![step(
                &[FlightBooked::TYPE, HotelBooked::TYPE],
                &[TripPaid::TYPE]
            )],
            compensates: vec![],
            initiates: vec![],
            terminal: types(&[TripPaid::TYPE]),
            compensation_order: "reverse".into(),
        }
    );
}

#[test]
fn no_step_or_compensation_may_take_a_runtime_event() {
    async fn on_abort(_: choreo::SagaAborted, _: Context) -> StepResult<TripPaid> {
        Ok(Step::done(TripPaid {}))
    }
    async fn undo(_: SagaCompensated, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
    let saga = Saga::new("trips.saga").completes_on::<TripPaid>();
    let error: BuildError = Service::builder("payments", &saga)
        .step(on_abort)
        .compensate(undo)
        .build()
        .unwrap_err();
    assert!(
        error.problems[0]
            .starts_with("a step for `choreo.SagaAborted.v1`: types in the `choreo.` namespace"),
        "{error}"
    );
    assert!(
        error.problems[1].starts_with("a compensation for `choreo.SagaCompensated.v1`"),
        "{error}"
    );
}

/// `letter` as it lay on the dead-letter topic, its `choreo-dead-letter-*` headers included.
fn as_dead_lettered(letter: &DeadLetter) -> choreo::RawMessage {
    let mut message = letter.message.clone();
    message
        .headers
        .extend(letter.marks.iter().map(|(name, value)| (name, value)));
    message
}

async fn a_dead_letter_names_the_service_and_the_saga(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| b.inventory_permanent_failure = true);
    let (_, saga) = h.place_order(2_500, "book").await;
    assert_eq!(
        h.outcome(saga).await,
        compensated(AbortReason::DeadLettered)
    );

    // A message that is no event, but says its saga: every service dead-letters it, each
    // naming itself, and the saga it says.
    let malformed_saga = choreo::SagaId::new();
    let malformed = choreo::RawMessage {
        headers: choreo::Headers::from([("ce_sagaid", malformed_saga.to_string())]),
        body: br#"{"order_id": 1}"#.to_vec(),
    };
    h.publish_raw(TOPIC, None, malformed.clone()).await;
    // And one that says nothing: named by each service, no saga.
    let foreign = choreo::RawMessage {
        headers: choreo::Headers::new(),
        body: b"hello".to_vec(),
    };
    h.publish_raw(TOPIC, None, foreign.clone()).await;

    let letters = h.dead_letters(1 + 2 * SERVICES.len()).await;
    h.settle().await;
    assert_eq!(h.dead_letters(0).await.len(), 1 + 2 * SERVICES.len());
    let mut seen: Vec<(String, Option<String>, &str)> = letters
        .iter()
        .map(|letter| {
            let what = if letter.body == malformed.body {
                "malformed"
            } else if letter.body == foreign.body {
                "foreign"
            } else {
                assert!(
                    letter.reason.starts_with(
                        "step for `payments.CreditReserved.v1` failed: SKU catalogue is corrupt"
                    ),
                    "{}",
                    letter.reason
                );
                "failed step"
            };
            (
                letter.mark(DEAD_LETTER_SERVICE_HEADER).unwrap().to_owned(),
                letter.mark(DEAD_LETTER_SAGA_HEADER).map(str::to_owned),
                what,
            )
        })
        .collect();
    seen.sort();
    let mut expected = vec![(
        "inventory".to_owned(),
        Some(saga.to_string()),
        "failed step",
    )];
    for service in SERVICES {
        expected.push((
            service.to_owned(),
            Some(malformed_saga.to_string()),
            "malformed",
        ));
        expected.push((service.to_owned(), None, "foreign"));
    }
    expected.sort();
    assert_eq!(seen, expected);
}

/// Holds failed steps, and has inventory fail for good until told otherwise.
async fn holding(backend: Backend) -> Harness {
    let mut h = Harness::prepare(backend).await;
    h.tune(|options| options.hold_failed_steps(true));
    h.start_all().await;
    h.world.set(|b| b.inventory_permanent_failure = true);
    h
}

async fn a_held_step_redriven_once_fixed_completes_the_saga(backend: Backend) {
    let h = holding(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;

    // Inventory's step fails for good: dead-lettered, the saga held, not aborted.
    let letters = h.dead_letters(1).await;
    let letter = &letters[0];
    assert!(
        letter
            .reason
            .starts_with("step for `payments.CreditReserved.v1` failed"),
        "{}",
        letter.reason
    );
    assert_eq!(letter.mark(DEAD_LETTER_SERVICE_HEADER), Some("inventory"));
    assert_eq!(
        letter.mark(DEAD_LETTER_SAGA_HEADER),
        Some(saga.to_string().as_str())
    );
    let credit = h.log.events(saga)[1].clone();
    assert_eq!(credit.event_type, CreditReserved::TYPE);
    // The dead letter is the event, as it was delivered.
    assert_eq!(Envelope::decode(&letter.message).unwrap(), credit);
    assert_eq!(
        h.flow(saga),
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE)
        ]
    );
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(inventory.status, SagaStatus::Active);
    assert!(!h.handled("inventory", &credit).await);

    // Fixed, and redriven: the saga goes on from there and completes.
    h.world.set(|b| b.inventory_permanent_failure = false);
    let request =
        control::redrive_request(&as_dead_lettered(letter), "inventory", "tester").unwrap();
    assert_eq!(request.saga_id, saga);
    assert_eq!(request.deadline, credit.deadline);
    assert_eq!(request.causation_id, Some(credit.id));
    assert_eq!(request.trace, credit.trace);
    assert_eq!(request.kind, SagaKind::Step);
    let redrive: RedriveRequested = data(&request);
    assert_eq!(redrive.service, "inventory");
    assert_eq!(redrive.requested_by, "tester");
    assert_eq!(
        Envelope::from_json(redrive.event.get().as_bytes()).unwrap(),
        credit
    );
    h.publish(request.clone()).await;

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settled(saga).await;
    h.settle().await;
    assert_eq!(
        h.flow(saga),
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("tester", RedriveRequested::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("payments", PaymentCaptured::TYPE),
            ev("orders", OrderConfirmed::TYPE),
        ]
    );
    // The redriven step's event is caused by the event it handled, as any step's.
    let stock = &h.log.events(saga)[3];
    assert_eq!(stock.causation_id, Some(credit.id));
    assert_eq!(stock.trace.trace_id(), credit.trace.trace_id());
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    assert_eq!(h.dead_letters(0).await.len(), 1);

    let orders = h.record("orders", saga).await.unwrap();
    assert_eq!(orders.status, SagaStatus::Completed);
    assert_eq!(
        step_types(&orders),
        [OrderPlaced::TYPE, OrderConfirmed::TYPE]
    );
    let payments = h.record("payments", saga).await.unwrap();
    assert_eq!(payments.status, SagaStatus::Completed);
    assert_eq!(
        step_types(&payments),
        [CreditReserved::TYPE, PaymentCaptured::TYPE]
    );
    // Inventory kept the event it held the saga on (for the abort's data and trace,
    // had the saga timed out), then recorded its step.
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(inventory.status, SagaStatus::Completed);
    assert_eq!(
        step_types(&inventory),
        [CreditReserved::TYPE, StockReserved::TYPE]
    );
    assert!(inventory.steps[0].is_received());
    assert_eq!(inventory.steps[1].input, Some(credit.id));
    assert!(h.handled("inventory", &credit).await);
    // The request itself is not in the inbox: redelivered, it finds the event handled.
    assert!(!h.handled("inventory", &request).await);
}

async fn a_held_step_nobody_redrives_times_out_and_a_later_redrive_does_nothing(backend: Backend) {
    let h = holding(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    let letters = h.dead_letters(1).await;

    // Rule 8: nobody redrives, so the deadline aborts the saga, and what was done is undone.
    assert_eq!(h.outcome(saga).await, compensated(AbortReason::TimedOut));
    h.settled(saga).await;
    h.settle().await;
    let flow = h.flow(saga);
    assert_eq!(
        flow[..3],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("orders", ABORTED),
        ]
    );
    assert_eq!(sorted(flow[3..].to_vec()), every_acknowledgement());
    let effects = vec![
        effect("orders", "create_order", order),
        effect("payments", "reserve_credit", order),
        effect("payments", "release_credit", order),
        effect("orders", "cancel_order", order),
    ];
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(effects.clone())
    );

    // Fixed too late: a redrive is not acted on, the saga being aborted.
    h.world.set(|b| b.inventory_permanent_failure = false);
    let request =
        control::redrive_request(&as_dead_lettered(&letters[0]), "inventory", "tester").unwrap();
    h.publish(request).await;
    h.settle().await;
    assert_eq!(h.flow(saga).len(), flow.len() + 1);
    assert_eq!(
        h.flow(saga).last(),
        Some(&ev("tester", RedriveRequested::TYPE))
    );
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(effects)
    );
    assert_eq!(h.dead_letters(0).await.len(), 1);
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(
            record.status,
            SagaStatus::Aborted {
                reason: AbortReason::TimedOut
            },
            "{service}"
        );
        assert!(record.compensation_acknowledged, "{service}");
    }
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(step_types(&inventory), [CreditReserved::TYPE]);
    assert!(inventory.steps[0].is_received());
    assert_eq!(
        acknowledgements(&h, saga)["inventory"].compensated,
        Vec::<String>::new()
    );
}

async fn a_redrive_of_an_event_handled_already_does_nothing(backend: Backend) {
    let h = Harness::start(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settled(saga).await;

    let credit = h.log.events(saga)[1].to_binary();
    let request = control::redrive_request(&credit, "inventory", "tester").unwrap();
    h.publish(request).await;
    h.settle().await;
    let mut flow = completed_flow();
    flow.push(ev("tester", RedriveRequested::TYPE));
    assert_eq!(h.flow(saga), flow);
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    assert_eq!(h.dead_letters(0).await.len(), 0);
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(inventory.status, SagaStatus::Completed);
    assert_eq!(step_types(&inventory), [StockReserved::TYPE]);
}

async fn a_redrive_request_for_another_saga_is_dead_lettered(backend: Backend) {
    let h = Harness::start(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settled(saga).await;

    let credit = h.log.events(saga)[1].to_binary();
    let mut request = control::redrive_request(&credit, "inventory", "tester").unwrap();
    let elsewhere = choreo::SagaId::new();
    request.saga_id = elsewhere;
    h.publish(request).await;
    // Addressed to inventory: only inventory dead-letters it.
    let letters = h.dead_letters(1).await;
    h.settle().await;
    assert_eq!(h.dead_letters(0).await.len(), 1);
    assert_eq!(
        letters[0].reason,
        format!("the event of the redrive request belongs to saga {saga}, not to the request's saga {elsewhere}")
    );
    assert_eq!(
        letters[0].mark(DEAD_LETTER_SERVICE_HEADER),
        Some("inventory")
    );
    assert_eq!(
        letters[0].mark(DEAD_LETTER_SAGA_HEADER),
        Some(elsewhere.to_string().as_str())
    );
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    assert_eq!(h.flow(saga), completed_flow());
}

async fn a_failed_compensation_retried_once_fixed_runs_once_and_is_acknowledged(backend: Backend) {
    let h = Harness::start(backend).await;
    // Releasing credit fails on every attempt (four), inventory is out of stock.
    h.world.set(|b| {
        b.refund_failures = 4;
        b.out_of_stock.insert("vinyl".into());
    });
    let (order, saga) = h.place_order(2_500, "vinyl").await;
    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![CreditReserved::TYPE.to_owned()],
        }
    );
    h.settled(saga).await;
    let letters = h.dead_letters(1).await;
    assert_eq!(
        letters[0].mark(DEAD_LETTER_SERVICE_HEADER),
        Some("payments")
    );
    assert_eq!(
        letters[0].mark(DEAD_LETTER_SAGA_HEADER),
        Some(saga.to_string().as_str())
    );
    let payments = h.record("payments", saga).await.unwrap();
    assert!(matches!(
        payments.steps[0].compensation,
        CompensationState::Failed { .. }
    ));
    assert_eq!(h.world.attempts("release_credit", order), 4);

    // A request to a service whose compensations all ran is ignored.
    let deadline = h.log.events(saga)[0].deadline;
    h.publish(control::retry_request(saga, deadline, "orders", "tester"))
        .await;
    // Fixed, and retried.
    h.world.set(|b| b.refund_failures = 0);
    let request = control::retry_request(saga, deadline, "payments", "tester");
    assert_eq!(request.saga_id, saga);
    assert_eq!(request.kind, SagaKind::Step);
    assert_eq!(
        data::<CompensationRetryRequested>(&request),
        CompensationRetryRequested {
            service: "payments".into(),
            requested_by: "tester".into()
        }
    );
    h.publish(request.clone()).await;
    let payments_acks = |events: &[Envelope]| {
        events
            .iter()
            .filter(|event| event.kind == SagaKind::Compensated && event.source == "payments")
            .count()
    };
    h.log
        .wait_until(saga, |events| payments_acks(events) == 2)
        .await;
    // A redelivery of the request finds it handled.
    h.publish(request.clone()).await;
    h.settle().await;

    let events = h.log.events(saga);
    let flow = h.flow(saga);
    assert_eq!(
        flow[..3],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", ABORTED),
        ]
    );
    assert_eq!(sorted(flow[3..6].to_vec()), every_acknowledgement());
    assert_eq!(
        flow[6..],
        [
            ev("tester", CompensationRetryRequested::TYPE),
            ev("tester", CompensationRetryRequested::TYPE),
            ev("payments", COMPENSATED),
            ev("tester", CompensationRetryRequested::TYPE),
        ]
    );
    let retried = &events[8];
    assert_eq!(retried.causation_id, Some(request.id));
    assert_eq!(
        data::<SagaCompensated>(retried),
        SagaCompensated {
            service: "payments".into(),
            compensated: vec![CreditReserved::TYPE.to_owned()],
            failed: vec![],
        }
    );
    // The latest acknowledgements say nothing failed any more.
    assert_eq!(h.outcome(saga).await, compensated(AbortReason::Rejected));

    // Released once, after four failed attempts and one that succeeded.
    assert_eq!(h.world.attempts("release_credit", order), 5);
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(vec![
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("payments", "release_credit", order),
            effect("orders", "cancel_order", order),
        ])
    );
    let payments = h.record("payments", saga).await.unwrap();
    assert_eq!(
        payments.status,
        SagaStatus::Aborted {
            reason: AbortReason::Rejected
        }
    );
    assert_eq!(step_types(&payments), [CreditReserved::TYPE]);
    assert_eq!(
        payments.steps[0].compensation,
        CompensationState::Compensated
    );
    assert!(h.handled("payments", &request).await);
    assert_eq!(h.dead_letters(0).await.len(), 1);
}

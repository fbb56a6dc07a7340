//! Each saga rule of docs/concepts.md on its own, on every transport and every store: the
//! in-memory transport on paused time, brokers (through the test kit) and PostgreSQL on real
//! time with short deadlines.

mod common;

/// Every rule, on the given backends.
macro_rules! every_rule_on {
    ($($backend:ident),*) => {
        scenarios! {
            $(
                $backend: [
                    a_completed_saga_propagates_ids_over_every_hop,
                    a_rejection_compensates_exactly_the_completed_steps_once_each_newest_first,
                    a_rejection_midway_leaves_later_services_nothing_to_undo,
                    a_transient_error_is_retried_with_backoff_and_then_succeeds,
                    a_step_that_keeps_failing_is_dead_lettered_and_aborts_the_saga,
                    a_permanent_error_or_a_panic_is_dead_lettered_without_retry,
                    a_failing_compensation_is_retried_then_dead_lettered_and_reported,
                    a_compensation_that_fails_transiently_runs_to_success_once,
                    a_duplicate_delivery_has_one_effect,
                    an_abort_that_overtakes_its_step_leaves_a_tombstone_and_the_step_is_skipped,
                    no_step_starts_past_the_deadline,
                    a_step_that_outruns_the_deadline_is_withheld_and_compensated,
                    the_deadline_fires_even_when_the_initiating_service_is_stopped,
                    a_malformed_message_is_dead_lettered_with_its_reason_and_consumers_go_on,
                    shutdown_finishes_in_flight_work_and_leaves_the_rest_for_redelivery,
                    sagas_run_concurrently_up_to_the_limit,
                    duplicate_aborts_are_harmless,
                    an_abort_after_completion_still_compensates_so_participants_agree_in_any_order,
                    a_terminal_event_completes_the_saga_where_it_is_emitted_however_late_it_goes_out,
                    a_terminal_event_that_one_service_alone_emits_is_not_delivered_back_to_it,
                    saga_data_set_at_the_start_reaches_every_step_and_every_event,
                    saga_data_reaches_the_compensations_of_a_timed_out_saga,
                    a_second_outcome_goes_to_its_own_consumers_and_can_end_the_saga,
                    a_second_outcome_is_undone_by_its_own_compensation,
                ];
            )*
        }
    };
}

// The whole set on the in-memory transport with each store, and on each broker with the
// memory store; the rejection and timeout rules also on RabbitMQ with each SQL store.
every_rule_on!(memory, memory_sqlite, memory_postgres, kafka, rabbitmq);
scenarios! {
    rabbitmq_sqlite: [
        a_rejection_compensates_exactly_the_completed_steps_once_each_newest_first,
        a_step_that_outruns_the_deadline_is_withheld_and_compensated,
        the_deadline_fires_even_when_the_initiating_service_is_stopped,
    ];
    rabbitmq_postgres: [
        a_rejection_compensates_exactly_the_completed_steps_once_each_newest_first,
        a_step_that_outruns_the_deadline_is_withheld_and_compensated,
        the_deadline_fires_even_when_the_initiating_service_is_stopped,
    ];
}

use std::sync::Arc;
use std::time::Duration;

use choreo::journal::CompensationState;
use choreo::{
    AbortReason, Envelope, Event, SagaAborted, SagaData, SagaKind, SagaOutcome, SagaStart,
    SagaStatus,
};
use common::*;

async fn a_completed_saga_propagates_ids_over_every_hop(backend: Backend) {
    let h = Harness::start(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.flow(saga), completed_flow());

    // Rules 1-2 (docs/concepts.md): one saga id, one deadline, one trace; each event caused
    // by the one before.
    let events = h.log.events(saga);
    let start = &events[0];
    assert_eq!(start.kind, SagaKind::Start);
    assert_eq!(start.causation_id, None);
    assert_eq!(start.deadline.instant(), start.time + backend.timeout());
    for pair in events.windows(2) {
        let (cause, effect) = (&pair[0], &pair[1]);
        assert_eq!(effect.saga_id, saga);
        assert_eq!(effect.causation_id, Some(cause.id));
        assert_eq!(effect.deadline, start.deadline);
        assert_eq!(effect.trace, start.trace);
    }
    assert!(start.trace.trace_id().is_some());
    assert_eq!(events.last().unwrap().kind, SagaKind::Complete);

    assert_eq!(h.effects(order).await, every_forward_step_once(order));

    // Rule 7: completion disarmed every timer: nothing happens after the deadline.
    h.settle().await;
    assert_eq!(h.flow(saga).len(), 5);

    // Rules 3 and 7: every participant recorded its steps and marked the saga completed.
    let orders = h.record("orders", saga).await.unwrap();
    assert_eq!(orders.status, SagaStatus::Completed);
    assert!(orders.initiated_here);
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
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(inventory.status, SagaStatus::Completed);
    assert_eq!(step_types(&inventory), [StockReserved::TYPE]);
}

async fn a_rejection_compensates_exactly_the_completed_steps_once_each_newest_first(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    h.world.set(|b| b.reject_confirmation = true);
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![]
        }
    );
    h.settle().await;

    let flow = h.flow(saga);
    assert_eq!(
        flow[..5],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("payments", PaymentCaptured::TYPE),
            ev("orders", ABORTED),
        ]
    );
    assert_eq!(sorted(flow[5..].to_vec()), every_acknowledgement());
    assert_eq!(
        flow.len(),
        8,
        "exactly one abort and one acknowledgement each"
    );
    let abort: SagaAborted = data(&h.log.events(saga)[4]);
    assert_eq!(abort.reason, AbortReason::Rejected);
    assert_eq!(abort.detail, "the customer cancelled the order");

    // Each service undid its own steps, newest first, each once.
    let effects = h.effects(order).await;
    let of = |service: &str| -> Vec<&str> {
        effects
            .iter()
            .filter(|e| e.service == service)
            .map(|e| e.action)
            .collect()
    };
    assert_eq!(of("orders"), ["create_order", "cancel_order"]);
    assert_eq!(
        of("payments"),
        [
            "reserve_credit",
            "capture_payment",
            "refund_payment",
            "release_credit"
        ]
    );
    assert_eq!(of("inventory"), ["reserve_stock", "release_stock"]);

    let acks = acknowledgements(&h, saga);
    assert_eq!(
        acks["payments"].compensated,
        [PaymentCaptured::TYPE, CreditReserved::TYPE]
    );
    assert_eq!(acks["inventory"].compensated, [StockReserved::TYPE]);
    assert_eq!(acks["orders"].compensated, [OrderPlaced::TYPE]);

    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(
            record.status,
            SagaStatus::Aborted {
                reason: AbortReason::Rejected
            },
            "{service}"
        );
        assert!(record.compensation_acknowledged, "{service}");
        assert!(
            record
                .steps
                .iter()
                .all(|step| step.compensation == CompensationState::Compensated),
            "{service}: {:?}",
            record.steps
        );
    }
}

async fn a_rejection_midway_leaves_later_services_nothing_to_undo(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.out_of_stock.insert("unobtainium".into());
    });
    let (order, saga) = h.place_order(2_500, "unobtainium").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![]
        }
    );
    h.settle().await;
    let flow = h.flow(saga);
    assert_eq!(
        flow[..3],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", ABORTED),
        ]
    );
    assert_eq!(flow.len(), 6);
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(vec![
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("payments", "release_credit", order),
            effect("orders", "cancel_order", order),
        ])
    );
    let acks = acknowledgements(&h, saga);
    assert!(acks["inventory"].compensated.is_empty());
    assert!(h.record("inventory", saga).await.unwrap().steps.is_empty());
}

async fn a_transient_error_is_retried_with_backoff_and_then_succeeds(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| b.inventory_transient_failures = 2);
    let started = tokio::time::Instant::now();
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.world.attempts("reserve_stock", order), 3);
    // Backoff 100 ms, then 200 ms.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.flow(saga).len(), 5);
    h.settle().await;
    assert!(h.dead_letters(0).await.is_empty());
}

async fn a_step_that_keeps_failing_is_dead_lettered_and_aborts_the_saga(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| b.inventory_transient_failures = u32::MAX);
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::DeadLettered,
            failed: vec![]
        }
    );
    h.settle().await;
    assert_eq!(h.world.attempts("reserve_stock", order), 3, "max_attempts");

    let dead = h.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    let poisoned = Envelope::decode(&dead[0].message).unwrap();
    assert_eq!(poisoned.event_type, CreditReserved::TYPE);
    assert_eq!(poisoned.saga_id, saga);
    // Once, without the error's kind: it is no longer worth retrying.
    let reason = "step for `payments.CreditReserved.v1` failed: \
                  warehouse system timed out (gave up after 3 attempts)";
    assert_eq!(dead[0].reason, reason);
    let abort: SagaAborted = data(&h.log.events(saga)[2]);
    assert_eq!(abort.detail, reason);

    let flow = h.flow(saga);
    assert_eq!(
        flow[..3],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", ABORTED),
        ]
    );
    assert_eq!(flow.len(), 6);
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(vec![
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("payments", "release_credit", order),
            effect("orders", "cancel_order", order),
        ])
    );
    assert_eq!(
        h.record("inventory", saga).await.unwrap().status,
        SagaStatus::Aborted {
            reason: AbortReason::DeadLettered
        }
    );
}

async fn a_permanent_error_or_a_panic_is_dead_lettered_without_retry(backend: Backend) {
    // One harness for both orders: on a broker, a second fresh one would spend the second
    // order's deadline joining its groups.
    let h = Harness::start(backend).await;
    for (count, panics) in [(1, false), (2, true)] {
        h.world.set(|b| {
            b.inventory_permanent_failure = !panics;
            b.inventory_panics = panics;
        });
        let (order, saga) = h.place_order(2_500, "book").await;

        assert_eq!(
            h.outcome(saga).await,
            compensated(AbortReason::DeadLettered)
        );
        assert_eq!(h.world.attempts("reserve_stock", order), 1);
        let dead = h.dead_letters(count).await;
        assert_eq!(dead.len(), count);
        let expected = if panics {
            "panicked: inventory bug"
        } else {
            "SKU catalogue is corrupt"
        };
        assert_eq!(
            dead[count - 1].reason,
            format!("step for `payments.CreditReserved.v1` failed: {expected} (a permanent error)")
        );
        assert_eq!(
            Envelope::decode(&dead[count - 1].message).unwrap().saga_id,
            saga
        );
    }
}

async fn a_failing_compensation_is_retried_then_dead_lettered_and_reported(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.refund_failures = u32::MAX;
        b.reject_confirmation = true;
    });
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![CreditReserved::TYPE.to_owned()]
        }
    );
    h.settle().await;
    assert_eq!(h.world.attempts("release_credit", order), 4, "max_attempts");

    let dead = h.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .starts_with("compensation of `payments.CreditReserved.v1` failed"),
        "{}",
        dead[0].reason
    );
    assert_eq!(
        Envelope::decode(&dead[0].message).unwrap().event_type,
        CreditReserved::TYPE
    );

    // The other compensations still ran; the failed one is recorded, not forgotten.
    let acks = acknowledgements(&h, saga);
    assert_eq!(acks["payments"].compensated, [PaymentCaptured::TYPE]);
    assert_eq!(acks["payments"].failed, [CreditReserved::TYPE]);
    let payments = h.record("payments", saga).await.unwrap();
    assert_eq!(
        payments.steps[1].compensation,
        CompensationState::Compensated
    );
    assert_eq!(
        payments.steps[0].compensation,
        CompensationState::Failed {
            reason: "compensation of `payments.CreditReserved.v1` failed: \
                     ledger unavailable (gave up after 4 attempts)"
                .into()
        }
    );
    assert!(!h
        .effects(order)
        .await
        .contains(&effect("payments", "release_credit", order)));
}

async fn a_compensation_that_fails_transiently_runs_to_success_once(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.refund_failures = 2;
        b.out_of_stock.insert("book".into());
    });
    let (order, saga) = h.place_order(2_500, "book").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![]
        }
    );
    assert_eq!(h.world.attempts("release_credit", order), 3);
    let releases = h
        .effects(order)
        .await
        .into_iter()
        .filter(|e| e.action == "release_credit")
        .count();
    assert_eq!(releases, 1);
}

async fn a_duplicate_delivery_has_one_effect(backend: Backend) {
    let h = Harness::start(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);

    // The broker delivers every event of the saga again, same ids.
    for event in h.log.events(saga) {
        h.publish(event).await;
    }
    h.settle().await;

    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    // The observer saw the duplicates; no service emitted anything new.
    assert_eq!(h.flow(saga).len(), 10);
    h.assert_every_status(saga, SagaStatus::Completed).await;
}

async fn an_abort_that_overtakes_its_step_leaves_a_tombstone_and_the_step_is_skipped(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let saga = choreo::SagaId::new();
    let deadline = h.deadline_in(backend.timeout());
    let credit = CreditReserved {
        order_id: 99,
        amount_cents: 2_500,
        sku: "book".into(),
    };
    h.publish(h.abort_event(saga, deadline, AbortReason::Rejected))
        .await;
    h.publish(h.event("payments", saga, deadline, SagaKind::Step, &credit))
        .await;
    h.settle().await;

    assert!(h.effects(99).await.is_empty(), "inventory reserved stock");
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(
        inventory.status,
        SagaStatus::Aborted {
            reason: AbortReason::Rejected
        }
    );
    assert!(inventory.steps.is_empty());
    // The abort came first; the late step event and the acknowledgements may interleave,
    // as the participants answer the abort while the step event is still being published.
    let flow = h.flow(saga);
    assert_eq!(flow[0], ev("tester", ABORTED));
    let mut rest: Vec<_> = SERVICES.iter().map(|s| ev(s, COMPENSATED)).collect();
    rest.push(ev("payments", CreditReserved::TYPE));
    assert_eq!(sorted(flow[1..].to_vec()), sorted(rest));
}

async fn no_step_starts_past_the_deadline(backend: Backend) {
    let h = Harness::start(backend).await;
    let saga = choreo::SagaId::new();
    let deadline = h.deadline_in(backend.units(5));
    tokio::time::sleep(backend.units(6)).await;
    let credit = CreditReserved {
        order_id: 7,
        amount_cents: 2_500,
        sku: "book".into(),
    };
    let mut late = h.event("payments", saga, deadline, SagaKind::Step, &credit);
    late.saga_data = card_token("tok_late");
    h.publish(late.clone()).await;

    let outcome = h.outcome(saga).await;
    assert_eq!(
        outcome,
        SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        }
    );
    assert_eq!(h.world.attempts("reserve_stock", 7), 0);
    assert!(h.effects(7).await.is_empty());
    // Inventory, holding the late event, aborted the saga itself after its grace period,
    // with the saga data and the trace of that event (rule 2), which it kept for this.
    let flow = h.flow(saga);
    assert_eq!(
        flow[..2],
        [
            ev("payments", CreditReserved::TYPE),
            ev("inventory", ABORTED)
        ]
    );
    assert_eq!(flow.len(), 5);
    let abort = &h.log.events(saga)[1];
    assert_eq!(abort.saga_data, late.saga_data);
    assert_eq!(abort.trace.trace_id(), late.trace.trace_id());
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(inventory.steps.len(), 1);
    assert!(inventory.steps[0].is_received());
    assert_eq!(*inventory.steps[0].output, late);
}

async fn a_step_that_outruns_the_deadline_is_withheld_and_compensated(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(15));
    });
    let started = tokio::time::Instant::now();
    let (order, saga) = h.place_order(2_500, "slow").await;

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        }
    );
    h.settle().await;
    let flow = h.flow(saga);
    // The initiator's timer fired at the deadline; nobody else needed to.
    assert_eq!(
        flow[..3],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("orders", ABORTED),
        ]
    );
    assert_eq!(flow.len(), 6, "StockReserved was withheld: {flow:?}");
    let abort = &h.log.events(saga)[2];
    assert_eq!(abort.time, abort.deadline.instant().max(abort.time));
    assert!(started.elapsed() >= backend.units(15));

    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(step_types(&inventory), [StockReserved::TYPE]);
    assert!(inventory.steps[0].withheld);
    assert_eq!(
        inventory.steps[0].compensation,
        CompensationState::Compensated
    );
    assert_eq!(
        sorted_effects(h.effects(order).await),
        every_reservation_undone(order)
    );
}

async fn the_deadline_fires_even_when_the_initiating_service_is_stopped(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(15));
    });
    let (order, saga) = h.place_order(2_500, "slow").await;
    h.running.remove("orders").unwrap().kill();

    assert_eq!(
        h.outcome_among(saga, &["payments", "inventory"]).await,
        SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        }
    );
    let events = h.log.events(saga);
    let abort = events.iter().find(|e| e.kind == SagaKind::Abort).unwrap();
    assert_eq!(
        abort.source, "payments",
        "the participant holding work fired"
    );
    let aborted: SagaAborted = data(abort);
    assert_eq!(aborted.reason, AbortReason::TimedOut);
    assert_eq!(
        events.iter().filter(|e| e.kind == SagaKind::Abort).count(),
        1
    );

    // Back up, orders finds the abort waiting and undoes its part too.
    h.start_service("orders").await;
    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        }
    );
    h.settle().await;
    assert_eq!(
        sorted_effects(h.effects(order).await),
        every_reservation_undone(order)
    );
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(
            record.status,
            SagaStatus::Aborted {
                reason: AbortReason::TimedOut
            }
        );
        assert!(record.compensation_acknowledged);
    }
}

async fn a_malformed_message_is_dead_lettered_with_its_reason_and_consumers_go_on(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let garbage = choreo::RawMessage {
        headers: choreo::Headers::from([("ce_type", "orders.OrderPlaced.v1")]),
        body: br#"{"order_id": 1}"#.to_vec(),
    };
    h.publish_raw(TOPIC, None, garbage.clone()).await;
    let not_json = choreo::RawMessage {
        body: b"\xff\x00 not json".to_vec(),
        ..h.event(
            "orders",
            choreo::SagaId::new(),
            h.deadline_in(backend.timeout()),
            SagaKind::Start,
            &OrderPlaced {
                order_id: 5,
                amount_cents: 1,
                sku: "x".into(),
            },
        )
        .to_binary()
    };
    h.publish_raw(TOPIC, None, not_json.clone()).await;
    let foreign = choreo::RawMessage {
        headers: choreo::Headers::new(),
        body: b"hello".to_vec(),
    };
    h.publish_raw(TOPIC, None, foreign.clone()).await;

    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.effects(order).await.len(), 5);

    // Each service's consumer group dead-lettered each bad message once, saying why: a
    // message that is not a CloudEvent, one missing attributes, one whose data is not JSON.
    let dead = h.dead_letters(3 * SERVICES.len()).await;
    h.settle().await;
    assert_eq!(h.dead_letters(0).await.len(), 3 * SERVICES.len());
    for letter in &dead {
        if letter.body == foreign.body {
            assert_eq!(
                letter.reason,
                "malformed event: not a CloudEvent: no `ce_` headers, \
                 and the content type is not `application/cloudevents+json`"
            );
        } else if letter.body == garbage.body {
            assert_eq!(
                letter.reason,
                "malformed event: missing required attribute `specversion`"
            );
        } else {
            assert_eq!(letter.body, not_json.body);
            assert!(
                letter
                    .reason
                    .starts_with("malformed event: data is not valid JSON"),
                "{}",
                letter.reason
            );
        }
    }
    for service in SERVICES {
        assert_eq!(h.pending(TOPIC, service).unwrap_or(0), 0, "{service}");
    }
}

async fn shutdown_finishes_in_flight_work_and_leaves_the_rest_for_redelivery(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(3));
    });
    // Inventory takes one event at a time, so two orders wait in the broker.
    h.running.remove("inventory").unwrap().shutdown().await;
    h.start_with("inventory", h.options().concurrency(1)).await;
    // Deadlines far enough away that rejoining a broker's consumer group fits in.
    let patient = backend.units(40);
    let a = h.place_order_within(100, "slow", patient).await;
    let b = h.place_order_within(200, "slow", patient).await;
    let c = h.place_order_within(300, "slow", patient).await;

    // Once inventory is inside the slow step of one of them, it stops.
    h.wait_until(|| {
        [a, b, c]
            .iter()
            .any(|(order, _)| h.world.attempts("reserve_stock", *order) > 0)
    })
    .await;
    h.running.remove("inventory").unwrap().shutdown().await;

    // The event in flight was finished and acked; the others were not touched.
    let reserved: Vec<u64> = h
        .world
        .all_effects()
        .await
        .into_iter()
        .filter(|e| e.action == "reserve_stock")
        .map(|e| e.order_id)
        .collect();
    assert_eq!(reserved.len(), 1);
    if let Some(pending) = h.pending(TOPIC, "inventory") {
        assert!(pending >= 2, "{pending}");
    }

    h.start_service("inventory").await;
    for (order, saga) in [a, b, c] {
        assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
        let reservations = h
            .effects(order)
            .await
            .into_iter()
            .filter(|e| e.action == "reserve_stock")
            .count();
        assert_eq!(reservations, 1, "order {order}");
    }
    h.settle().await;
    assert_eq!(h.pending(TOPIC, "inventory").unwrap_or(0), 0);
}

async fn sagas_run_concurrently_up_to_the_limit(backend: Backend) {
    async fn elapsed_for_three_slow_sagas(backend: Backend, concurrency: usize) -> Duration {
        let mut h = Harness::start(backend).await;
        h.world.set(|b| {
            b.slow_skus.insert("slow".into(), backend.units(2));
        });
        h.running.remove("inventory").unwrap().shutdown().await;
        h.start_with("inventory", h.options().concurrency(concurrency))
            .await;
        let started = tokio::time::Instant::now();
        let mut sagas = Vec::new();
        for _ in 0..3 {
            sagas.push(h.place_order(100, "slow").await.1);
        }
        for saga in sagas {
            assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
        }
        started.elapsed()
    }

    let concurrent = elapsed_for_three_slow_sagas(backend, 16).await;
    let one_at_a_time = elapsed_for_three_slow_sagas(backend, 1).await;
    // Three sagas one at a time take at least 6 units; together, one slow step plus hops.
    assert!(concurrent < backend.units(5), "{concurrent:?}");
    assert!(one_at_a_time >= backend.units(6), "{one_at_a_time:?}");
}

async fn duplicate_aborts_are_harmless(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(5));
    });
    let (order, saga) = h.place_order(2_500, "slow").await;
    h.wait_until(|| h.world.attempts("reserve_stock", order) == 1)
        .await;
    // From the initiator's journal: the observer may not have seen the start yet.
    let deadline = h.record("orders", saga).await.unwrap().deadline;
    let abort = h.abort_event(saga, deadline, AbortReason::Rejected);
    h.publish(abort.clone()).await;
    h.publish(abort).await; // redelivered: same id
    h.publish(h.abort_event(saga, deadline, AbortReason::TimedOut))
        .await; // another participant's: new id

    assert_eq!(
        h.outcome(saga).await,
        SagaOutcome::Compensated {
            reason: AbortReason::Rejected,
            failed: vec![]
        }
    );
    h.settle().await;
    let effects = h.effects(order).await;
    let undo_count = |action| effects.iter().filter(|e| e.action == action).count();
    assert_eq!(undo_count("release_credit"), 1);
    assert_eq!(undo_count("release_stock"), 1);
    assert_eq!(undo_count("cancel_order"), 1);
    assert_eq!(acknowledgements(&h, saga).len(), 3);
    // The first abort decided the reason everywhere.
    h.assert_every_status(
        saga,
        SagaStatus::Aborted {
            reason: AbortReason::Rejected,
        },
    )
    .await;
}

async fn an_abort_after_completion_still_compensates_so_participants_agree_in_any_order(
    backend: Backend,
) {
    let h = Harness::start(backend).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    let deadline = h.log.events(saga)[0].deadline;
    h.publish(h.abort_event(saga, deadline, AbortReason::TimedOut))
        .await;
    h.settle().await;

    assert_eq!(
        h.log.outcome(saga, &SERVICES),
        Some(SagaOutcome::Compensated {
            reason: AbortReason::TimedOut,
            failed: vec![]
        })
    );
    let undone: Vec<_> = h
        .effects(order)
        .await
        .into_iter()
        .skip(5)
        .map(|e| (e.service, e.action))
        .collect();
    assert_eq!(
        sorted(undone),
        sorted(vec![
            ("orders", "cancel_order"),
            ("payments", "refund_payment"),
            ("payments", "release_credit"),
            ("inventory", "release_stock"),
        ])
    );
}

/// Orders' terminal event reaches the broker only once the deadline has passed, as with a
/// broker slow to take it. Orders completed the saga when it committed the event, so its
/// timer does not abort a saga that completed in time; the others, whose grace runs a while
/// longer, complete as the event reaches them.
async fn a_terminal_event_completes_the_saga_where_it_is_emitted_however_late_it_goes_out(
    backend: Backend,
) {
    let mut h = Harness::start(backend).await;
    h.running.remove("orders").unwrap().shutdown().await;
    let slow = Arc::new(faults::Faulty::new(
        h.own_connection().await,
        Arc::clone(&h.world),
        OrderConfirmed::TYPE,
        "none",
    ));
    // Counted from its commit, after the start: it goes out past the deadline.
    slow.slow_publishes(backend.timeout());
    h.start_on("orders", slow).await;

    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    let deadline = h.log.events(saga)[0].deadline;
    assert!(deadline.has_passed(choreo::Clock::now(&h.clock)));
    assert_completed_everywhere(&h, order, saga).await;
}

/// The saga says that orders alone emits its terminal events (`Saga::completes_on_from`):
/// they are left out of what orders subscribes to, since it completes a saga when it commits
/// one (rule 7), while the others still receive them and complete.
async fn a_terminal_event_that_one_service_alone_emits_is_not_delivered_back_to_it(
    backend: Backend,
) {
    let mut h = Harness::prepare(backend).await;
    h.saga = saga(backend.timeout())
        .completes_on_from::<OrderConfirmed>("orders")
        .completes_on_from::<OrderBackordered>("orders");
    h.start_all().await;
    h.running.remove("orders").unwrap().shutdown().await;
    let recording = Arc::new(faults::Faulty::new(
        h.own_connection().await,
        Arc::clone(&h.world),
        "none",
        "none",
    ));
    h.start_on(
        "orders",
        Arc::clone(&recording) as Arc<dyn choreo::Transport>,
    )
    .await;

    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_completed_everywhere(&h, order, saga).await;
    // A Kafka consumer group reads its topic whole, and the service drops what it does not
    // act on; the other transports route by type.
    #[cfg(feature = "kafka")]
    if backend.via == Via::Kafka {
        return;
    }
    // Of the saga's events, orders received only the input of its step.
    assert_eq!(recording.delivered(), [PaymentCaptured::TYPE]);
}

/// What a completed order saga leaves once everything settled: its events in order, every
/// forward step once, and every participant's journal completed with its own steps.
async fn assert_completed_everywhere(h: &Harness, order: u64, saga: choreo::SagaId) {
    h.settle().await;
    assert_eq!(h.flow(saga), completed_flow(), "{}", h.log.timeline(saga));
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    h.assert_every_status(saga, SagaStatus::Completed).await;
    let steps: [(&str, &[&str]); 3] = [
        ("orders", &[OrderPlaced::TYPE, OrderConfirmed::TYPE]),
        ("payments", &[CreditReserved::TYPE, PaymentCaptured::TYPE]),
        ("inventory", &[StockReserved::TYPE]),
    ];
    for (service, expected) in steps {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(step_types(&record), expected, "{service}");
    }
}

/// `start_saga_within` sets the deadline a timeout after the start, by the service's clock,
/// and every participant keeps that deadline.
#[tokio::test(start_paused = true)]
async fn a_saga_started_within_a_timeout_is_due_that_long_after_its_start() {
    let h = Harness::start(Backend::MEMORY).await;
    let order = OrderPlaced {
        order_id: 1,
        amount_cents: 2_500,
        sku: "book".into(),
    };
    let timeout = Duration::from_secs(7);
    let saga = h.running["orders"]
        .start_saga_within(order, timeout)
        .await
        .unwrap();

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(h.flow(saga), completed_flow());
    // Started outside a transaction: no order row was created with it.
    assert_eq!(h.effects(1).await, every_forward_step_once(1)[1..]);
    let start = &h.log.events(saga)[0];
    assert_eq!(start.deadline.instant(), start.time + timeout);
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(record.deadline, start.deadline, "{service}");
        assert_eq!(record.status, SagaStatus::Completed, "{service}");
    }
}

/// Waiting for a saga's outcome gives up after the time given, saying what is missing: here
/// an acknowledgement from a participant whose name is misspelt, so that no event ever came
/// from it.
#[tokio::test(start_paused = true)]
async fn waiting_for_an_outcome_names_what_is_missing_when_it_gives_up() {
    let h = Harness::start(Backend::MEMORY).await;
    let (order, saga) = h.place_order(50_000, "book").await;
    let rejected = compensated(AbortReason::Rejected);
    assert_eq!(h.outcome(saga).await, rejected);

    let waited = Duration::from_secs(5);
    let not_ended = h
        .log
        .wait_for_outcome(saga, &["orders", "payment"], waited)
        .await
        .unwrap_err();
    assert_eq!(
        (
            not_ended.aborted,
            not_ended.unacknowledged.clone(),
            not_ended.never_seen.clone(),
            not_ended.seen.clone(),
        ),
        (
            true,
            vec!["payment".to_owned()],
            vec!["payment".to_owned()],
            vec!["inventory".into(), "orders".into(), "payments".into()],
        )
    );
    assert_eq!(not_ended.timeline, h.log.timeline(saga));
    let message = not_ended.to_string();
    assert!(
        message.starts_with(&format!(
            "saga {saga} did not end within 5s; aborted, no acknowledgement yet from payment; \
             no event on the topic ever came from payment (events came from inventory, orders, \
             payments): a misspelt participant?; its events:\n"
        )),
        "{message}"
    );
    assert_eq!(
        h.log
            .wait_for_outcome(saga, &SERVICES, waited)
            .await
            .unwrap(),
        rejected
    );
    let flow = h.flow(saga);
    assert_eq!(
        flow[..2],
        [ev("orders", OrderPlaced::TYPE), ev("payments", ABORTED)]
    );
    // The acknowledgements, in any order.
    assert_eq!(sorted(flow[2..].to_vec()), every_acknowledgement());
    assert_eq!(
        h.effects(order).await,
        [
            effect("orders", "create_order", order),
            effect("orders", "cancel_order", order),
        ]
    );
}

/// Waiting for the end with the participants learned from the saga's events: every service
/// that published one of them, acknowledgements aside, must acknowledge the abort. Payments
/// reserves the credit and is killed; the saga times out; orders and inventory acknowledge,
/// and the wait gives up naming payments. Once payments is back it compensates from its store
/// and acknowledges, and the wait ends. Then inventory is down while payments rejects an
/// order: inventory took no part, so the wait does not need it.
#[tokio::test(start_paused = true)]
async fn waiting_for_the_end_learns_the_participants_from_the_events() {
    let mut h = Harness::start(Backend::MEMORY).await;
    let slow = h.units(3);
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), slow);
    });
    let (order, saga) = h.place_order_within(100, "slow", h.units(10)).await;
    h.log
        .published::<CreditReserved>(saga, h.units(5))
        .await
        .unwrap();
    h.kill("payments");

    let waited = h.units(30);
    let not_ended = h.log.wait_for_end(saga, waited).await.unwrap_err();
    assert_eq!(
        (not_ended.aborted, not_ended.unacknowledged.clone()),
        (true, vec!["payments".to_owned()]),
        "{not_ended}"
    );
    assert!(
        not_ended
            .to_string()
            .contains("aborted, no acknowledgement yet from payments; its events:"),
        "{not_ended}"
    );
    assert_eq!(h.log.ended(saga), None);

    h.start_service("payments").await;
    let outcome = h.log.wait_for_end(saga, waited).await.unwrap();
    assert_eq!(outcome, compensated(AbortReason::TimedOut));
    let flow = h.flow(saga);
    assert_eq!(
        flow[..4],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("orders", ABORTED),
        ]
    );
    assert_eq!(sorted(flow[4..].to_vec()), every_acknowledgement());
    assert_eq!(
        sorted_effects(h.effects(order).await),
        every_reservation_undone(order)
    );
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(
            (record.status, record.compensation_acknowledged),
            (
                SagaStatus::Aborted {
                    reason: AbortReason::TimedOut
                },
                true
            ),
            "{service}"
        );
    }

    h.kill("inventory");
    let (refused, saga) = h.place_order(50_000, "book").await;
    let outcome = h.log.wait_for_end(saga, waited).await.unwrap();
    assert_eq!(outcome, compensated(AbortReason::Rejected));
    let flow = h.flow(saga);
    assert_eq!(
        flow[..2],
        [ev("orders", OrderPlaced::TYPE), ev("payments", ABORTED)]
    );
    assert_eq!(
        sorted(flow[2..].to_vec()),
        [ev("orders", COMPENSATED), ev("payments", COMPENSATED)]
    );
    assert_eq!(
        h.effects(refused).await,
        [
            effect("orders", "create_order", refused),
            effect("orders", "cancel_order", refused),
        ]
    );
    // Named, inventory is waited for in vain.
    let not_ended = h
        .log
        .wait_for_outcome(saga, &SERVICES, waited)
        .await
        .unwrap_err();
    assert_eq!(not_ended.unacknowledged, ["inventory"]);
}

/// Typed waits on the saga log: an event published, and an event a service consumed (it
/// replied to it), each with its data; a wait that is not met fails saying what it waited
/// for, with the saga's timeline.
#[tokio::test(start_paused = true)]
async fn the_saga_log_waits_for_typed_events_published_and_consumed() {
    let h = Harness::start(Backend::MEMORY).await;
    let (order, saga) = h.place_order(2_500, "book").await;
    let wait = Duration::from_secs(5);

    let reserved: CreditReserved = h.log.published(saga, wait).await.unwrap();
    assert_eq!(
        reserved,
        CreditReserved {
            order_id: order,
            amount_cents: 2_500,
            sku: "book".into(),
        }
    );
    let consumed: CreditReserved = h.log.consumed_by(saga, "inventory", wait).await.unwrap();
    assert_eq!(consumed, reserved);
    let placed: OrderPlaced = h.log.consumed_by(saga, "payments", wait).await.unwrap();
    assert_eq!(placed.order_id, order);
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);

    // Inventory has no step for OrderPlaced: it never replies to one.
    let not_seen = h
        .log
        .consumed_by::<OrderPlaced>(saga, "inventory", wait)
        .await
        .unwrap_err();
    assert_eq!(
        not_seen.what,
        "`inventory` consuming a `orders.OrderPlaced.v1`"
    );
    assert_eq!(not_seen.timeline, h.log.timeline(saga));
    assert!(not_seen.to_string().starts_with(&format!(
        "saga {saga}: no `inventory` consuming a `orders.OrderPlaced.v1` within 5s; its events:\n"
    )));
    assert_eq!(h.flow(saga), completed_flow());
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
}

fn card_token(token: &str) -> SagaData {
    SagaData::new().with("card_token", token).unwrap()
}

/// Every handler that wrote an effect of `order` (the order row is written with the start,
/// outside any handler) read `data` from its context.
async fn every_handler_read(h: &Harness, order: u64, data: &SagaData) {
    for effect in h.effects(order).await {
        if effect.action != "create_order" {
            assert_eq!(
                h.world.saga_data_seen(effect.action, order).as_ref(),
                Some(data),
                "{}",
                effect.action
            );
        }
    }
}

/// Rule 2: values set at the start travel with every event, so the last step reads them
/// though no handler copied them into its event.
async fn saga_data_set_at_the_start_reaches_every_step_and_every_event(backend: Backend) {
    let h = Harness::start(backend).await;
    let data = card_token("tok_42");
    let (order, saga) = h
        .place_order_as(2_500, "book", SagaStart::new().data(data.clone()))
        .await;

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settle().await;
    assert_eq!(h.flow(saga), completed_flow());
    for event in h.log.events(saga) {
        assert_eq!(event.saga_data, data, "{}", event.event_type);
    }
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    every_handler_read(&h, order, &data).await;
    assert_eq!(
        h.world
            .saga_data_seen("confirm_order", order)
            .unwrap()
            .get::<String>("card_token")
            .unwrap()
            .as_deref(),
        Some("tok_42")
    );
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(record.status, SagaStatus::Completed, "{service}");
        assert_eq!(record.saga_data(), data, "{service}");
    }
}

/// The abort a deadline timer decides has no event to inherit from: it carries the saga
/// data the journal recorded, and so do the compensations' contexts and acknowledgements.
async fn saga_data_reaches_the_compensations_of_a_timed_out_saga(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(15));
    });
    let data = card_token("tok_7");
    let (order, saga) = h
        .place_order_as(2_500, "slow", SagaStart::new().data(data.clone()))
        .await;

    assert_eq!(h.outcome(saga).await, compensated(AbortReason::TimedOut));
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
    for event in h.log.events(saga) {
        assert_eq!(event.saga_data, data, "{}", event.event_type);
    }
    assert_eq!(
        sorted_effects(h.effects(order).await),
        every_reservation_undone(order)
    );
    every_handler_read(&h, order, &data).await;
    h.assert_every_status(
        saga,
        SagaStatus::Aborted {
            reason: AbortReason::TimedOut,
        },
    )
    .await;
}

/// A step with two outcomes (inventory reserves the stock, or backorders it): the second
/// goes to the step that handles it (orders waits for stock) and not to the first's
/// (payments captures nothing), and what that step emits ends the saga.
async fn a_second_outcome_goes_to_its_own_consumers_and_can_end_the_saga(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.backordered.insert("vinyl".into());
    });
    let (order, saga) = h.place_order(2_500, "vinyl").await;

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settle().await;
    assert_eq!(
        h.flow(saga),
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", StockBackordered::TYPE),
            ev("orders", OrderBackordered::TYPE),
        ]
    );
    assert_eq!(h.log.events(saga)[3].kind, SagaKind::Complete);
    assert_eq!(
        h.effects(order).await,
        [
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("inventory", "backorder_stock", order),
            effect("orders", "await_stock", order),
        ]
    );
    for (service, steps) in [
        ("orders", vec![OrderPlaced::TYPE, OrderBackordered::TYPE]),
        ("payments", vec![CreditReserved::TYPE]),
        ("inventory", vec![StockBackordered::TYPE]),
    ] {
        let record = h.record(service, saga).await.unwrap();
        assert_eq!(record.status, SagaStatus::Completed, "{service}");
        assert_eq!(step_types(&record), steps, "{service}");
    }
}

/// When the saga aborts after the second outcome, the compensation registered for that
/// outcome's event undoes it.
async fn a_second_outcome_is_undone_by_its_own_compensation(backend: Backend) {
    let h = Harness::start(backend).await;
    h.world.set(|b| {
        b.backordered.insert("vinyl".into());
        b.reject_confirmation = true;
    });
    let (order, saga) = h.place_order(2_500, "vinyl").await;

    assert_eq!(h.outcome(saga).await, compensated(AbortReason::Rejected));
    h.settle().await;
    let flow = h.flow(saga);
    assert_eq!(
        flow[..4],
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("inventory", StockBackordered::TYPE),
            ev("orders", ABORTED),
        ]
    );
    assert_eq!(sorted(flow[4..].to_vec()), every_acknowledgement());
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(vec![
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("inventory", "backorder_stock", order),
            effect("inventory", "cancel_backorder", order),
            effect("payments", "release_credit", order),
            effect("orders", "cancel_order", order),
        ])
    );
    let inventory = h.record("inventory", saga).await.unwrap();
    assert_eq!(step_types(&inventory), [StockBackordered::TYPE]);
    assert_eq!(
        inventory.steps[0].compensation,
        CompensationState::Compensated
    );
    h.assert_every_status(
        saga,
        SagaStatus::Aborted {
            reason: AbortReason::Rejected,
        },
    )
    .await;
}

//! Several instances of each service on one PostgreSQL store (docs/deployment.md): the
//! handlings of one saga are serialised by the store across instances, and what an instance
//! held when it died (its deadline timers, events it recorded but did not send) is taken
//! over by the others. On the in-memory transport, whose consumer groups hand events to
//! competing members as a broker does; time is real, as PostgreSQL's is.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use choreo::journal::{AbortReason, CompensationState, SagaStatus};
use choreo::memory::{Chaos, MemoryTransport};
use choreo::telemetry::metrics as names;
use choreo::{Envelope, Event, RunningService, SagaKind, SagaOutcome};
use common::*;

/// How long work an instance held waits for it before another takes it over, here.
fn takeover(h: &Harness) -> Duration {
    h.units(2)
}

/// No service started yet, on `backend`; services start with the take-over delay above and
/// record their metrics in the second value.
async fn prepare(backend: Backend) -> (Harness, Metered) {
    let mut h = Harness::prepare(backend).await;
    let takeover = takeover(&h);
    h.tune(|options| options.takeover_after(takeover));
    let metered = Metered::in_memory();
    h.meter = Some(metered.meter());
    (h, metered)
}

/// Work of `kind` (`deadline` or `event`) service `service` took over.
fn taken_over(metered: &Metered, service: &str, kind: &str) -> u64 {
    metered.count(
        names::TAKEOVERS,
        &[("choreo.service", service), ("choreo.takeover.kind", kind)],
    )
}

/// The latest instant the take-over may abort a saga whose `deadline` timer was in an
/// instance that is gone: the grace, the take-over delay, half of it between two looks,
/// and `handling` for the handling itself on a slow machine.
fn taken_over_by(h: &Harness, envelope: &Envelope, handling: Duration) -> std::time::SystemTime {
    let takeover = takeover(h);
    envelope.deadline.instant() + h.options().deadline_grace + takeover + takeover / 2 + handling
}

/// `(source, type)` of every distinct event of the saga, in order. An instance that dies
/// before it marks an event sent leaves it to be sent again, under its id, by the instance
/// that takes over: a duplicate delivery, which the inbox makes harmless.
fn distinct_flow(h: &Harness, saga: choreo::SagaId) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    h.log
        .events(saga)
        .into_iter()
        .filter(|event| seen.insert(event.id))
        .map(|event| ev(&event.source, &event.event_type))
        .collect()
}

/// Another instance of service `name`, with its own connection to the broker and its own
/// connection pool to the shared database, as another process would have.
async fn instance(h: &Harness, name: &'static str) -> RunningService {
    h.service(name, h.options())
        .await
        .run(h.own_connection().await)
        .await
        .unwrap()
}

/// Two events of one saga reach two instances of payments at once (as competing consumers
/// on RabbitMQ, or two owners of a Kafka partition during a rebalance, can): one captures
/// the payment, the other compensates an abort. The abort commits first; the capture's
/// commit is then refused by the store, its business write rolled back, and the capture
/// handled again from the record it finds: aborted, so the step is skipped. Without the
/// store's check the capture would commit after the compensation and never be refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_handling_one_saga_at_once_are_serialised_by_the_store() {
    // Reordering lets a consumer group hand out an event of a saga whose earlier event is
    // still being handled, as competing consumers do.
    let memory = MemoryTransport::with_chaos(Chaos::seeded(7).reorder(true));
    let mut h = Harness::prepare_on_memory(memory, StoreKind::Postgres).await;
    let metered = Metered::in_memory();
    h.meter = Some(metered.meter());
    h.start_service("orders").await;
    h.start_service("inventory").await;
    // One delivery at a time: while its capture waits at the gate, this instance takes
    // nothing else, so the abort goes to the second instance.
    h.start_with("payments", h.options().concurrency(1)).await;

    let order_id = h.next_order_id();
    h.world.gate.hold(order_id);
    let (_, saga) = h.place_order(5_000, "sku-1").await;
    h.world.gate.reached().await;
    let second = instance(&h, "payments").await;

    let deadline = h.log.events(saga)[0].deadline;
    h.publish(h.abort_event(saga, deadline, AbortReason::Rejected))
        .await;
    h.wait_until(|| acknowledgements(&h, saga).contains_key("payments"))
        .await;
    h.world.gate.open();
    assert_eq!(h.outcome(saga).await, compensated(AbortReason::Rejected));
    h.wait_until(|| h.pending(TOPIC, "payments") == Some(0))
        .await;

    assert_eq!(
        sorted_effects(h.effects(order_id).await),
        every_reservation_undone(order_id),
        "the capture's business write was rolled back with its refused commit"
    );
    assert_eq!(
        metered.count(names::CONFLICTS, &[("choreo.service", "payments")]),
        1,
        "the capture lost its race once, and was then skipped"
    );
    assert_eq!(metered.count(names::CONFLICTS, &[]), 1);
    let payments = h.record("payments", saga).await.unwrap();
    assert_eq!(step_types(&payments), ["payments.CreditReserved.v1"]);
    assert_eq!(
        payments.steps[0].compensation,
        CompensationState::Compensated
    );
    assert_eq!(
        payments.status,
        SagaStatus::Aborted {
            reason: AbortReason::Rejected
        }
    );
    assert!(payments.compensation_acknowledged);
    assert_eq!(
        sorted(h.flow(saga)),
        sorted(vec![
            ev("orders", "orders.OrderPlaced.v1"),
            ev("payments", "payments.CreditReserved.v1"),
            ev("inventory", "inventory.StockReserved.v1"),
            ev("tester", ABORTED),
            ev("orders", COMPENSATED),
            ev("payments", COMPENSATED),
            ev("inventory", COMPENSATED),
        ])
    );
    drop(second);
}

/// The instance that started a saga holds its deadline timer, and dies. Another instance
/// of the service, which never saw the saga, finds the overdue deadline in the store and
/// aborts the saga within deadline + grace + the take-over delay; the abort is compensated
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_whose_instance_died_is_fired_by_another_instance() {
    let (mut h, metered) = prepare(Backend::MEMORY.on(StoreKind::Postgres)).await;
    let takeover = takeover(&h);
    h.start_service("orders").await;
    let survivor = instance(&h, "orders").await;

    let (order_id, saga) = h.place_order_within(5_000, "sku-1", h.units(2)).await;
    h.kill("orders");

    let outcome = h.outcome_among(saga, &["orders"]).await;
    assert_eq!(outcome, compensated(AbortReason::TimedOut));
    let events = h.log.events(saga);
    let abort = events
        .iter()
        .find(|event| event.kind == SagaKind::Abort)
        .unwrap();
    let earliest = abort.deadline.instant() + h.options().deadline_grace + takeover;
    assert!(
        abort.time >= earliest && abort.time <= taken_over_by(&h, abort, Duration::from_secs(1)),
        "aborted at {:?}, {:?} after the deadline",
        abort.time,
        abort.time.duration_since(abort.deadline.instant())
    );
    assert_eq!(
        distinct_flow(&h, saga),
        [
            ev("orders", "orders.OrderPlaced.v1"),
            ev("orders", ABORTED),
            ev("orders", COMPENSATED),
        ]
    );
    assert_eq!(
        sorted_effects(h.effects(order_id).await),
        sorted_effects(vec![
            effect("orders", "create_order", order_id),
            effect("orders", "cancel_order", order_id),
        ])
    );
    let record = h.record("orders", saga).await.unwrap();
    assert_eq!(
        record.status,
        SagaStatus::Aborted {
            reason: AbortReason::TimedOut
        }
    );
    assert_eq!(record.steps[0].compensation, CompensationState::Compensated);
    assert!(record.compensation_acknowledged && record.abort_published);
    assert_eq!(taken_over(&metered, "orders", "deadline"), 1);
    drop(survivor);
}

/// The instance that started a saga recorded the start but the broker refused it, and the
/// instance died before it could send it again. Another instance finds the start unsent in
/// the store and publishes it, under its recorded id; the saga completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_instance_died_unsent_is_sent_by_another_instance() {
    let (mut h, metered) = prepare(Backend::MEMORY.on(StoreKind::Postgres)).await;
    h.start_service("payments").await;
    h.start_service("inventory").await;
    let refusing = Arc::new(faults::Faulty::new(
        Arc::clone(&h.transport),
        Arc::clone(&h.world),
        OrderPlaced::TYPE,
        CreditReserved::TYPE,
    ));
    refusing.refuse_publishes(u32::MAX);
    h.start_on("orders", refusing.clone()).await;
    let survivor = instance(&h, "orders").await;

    let (order_id, saga) = h.place_order(5_000, "sku-1").await;
    assert!(refusing.refused() >= 1, "the broker refused the start");
    h.kill("orders");

    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.wait_until(|| h.pending(TOPIC, "orders") == Some(0)).await;
    let record = h.record("orders", saga).await.unwrap();
    let events = h.log.events(saga);
    assert_eq!(events[0].id, record.steps[0].output.id, "sent under its id");
    assert_eq!(distinct_flow(&h, saga), completed_flow());
    assert_eq!(h.effects(order_id).await, every_forward_step_once(order_id));
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(taken_over(&metered, "orders", "event"), 1, "the start");
    assert_eq!(taken_over(&metered, "orders", "deadline"), 0);
    drop(survivor);
}

/// How a saga of the mixed run is meant to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Completes,
    OverCreditLimit,
    OutOfStock,
    TimesOut,
}

impl Plan {
    fn of(n: u64) -> Self {
        match n % 8 {
            0 => Self::OverCreditLimit,
            1 => Self::OutOfStock,
            2 => Self::TimesOut,
            _ => Self::Completes,
        }
    }

    /// Amount, SKU and timeout, in units.
    fn order(self) -> (u64, &'static str, u64) {
        match self {
            Self::Completes => (5_000, "sku-1", 60),
            Self::OverCreditLimit => (50_000, "sku-1", 60),
            Self::OutOfStock => (5_000, "sku-gone", 60),
            Self::TimesOut => (5_000, "sku-slow", 4),
        }
    }
}

scenarios! {
    memory_postgres: [sagas_on_three_instances_of_each_service_survive_one_of_each_being_killed];
    kafka_postgres: [sagas_on_three_instances_of_each_service_survive_one_of_each_being_killed];
    rabbitmq_postgres: [sagas_on_three_instances_of_each_service_survive_one_of_each_being_killed];
}

/// Three instances of each service; sagas that complete, are rejected at payments or at
/// inventory, or time out. A third of the way in, one instance of each service is killed
/// (tasks aborted, connections dropped) and a new one started. Every saga ends completed
/// or compensated by every participant, each business effect and each compensation exactly
/// once, and every timed-out saga is aborted within deadline + grace + the take-over delay.
/// A thousand sagas on the brokers, at most sixty open at a time; fewer on the in-memory
/// transport, which has no broker of its own to exercise.
async fn sagas_on_three_instances_of_each_service_survive_one_of_each_being_killed(
    backend: Backend,
) {
    let sagas_to_run: u64 = if backend.via == Via::Memory {
        240
    } else {
        1_000
    };
    let (mut h, _) = prepare(backend).await;
    // The nine instances open their pools at once in the first burst of sagas, on the one
    // server every test of this file shares: at the default of ten connections each, the
    // server spends seconds starting backends and preparing statements, and the first
    // deadlines fire seconds late. A few connections each are enough.
    h.pool_store_connections(4);
    let slow = h.units(10);
    h.world.set(|behaviour| {
        behaviour.credit_limit_cents = 10_000;
        behaviour.out_of_stock.insert("sku-gone".into());
        behaviour.slow_skus.insert("sku-slow".into(), slow);
    });
    // The first instance of each is the harness's: orders places the orders through it.
    let mut others = Vec::new();
    for name in SERVICES {
        h.running.insert(name, instance(&h, name).await);
        for _ in 0..2 {
            others.push(instance(&h, name).await);
        }
    }

    // At most this many sagas open at once: a bounded load, as a deadline bound needs (the
    // store, flushing every commit to disk, sets the pace).
    const OPEN: usize = 60;
    let mut sagas = Vec::new();
    for n in 0..sagas_to_run {
        if let Some(&(_, _, oldest)) = sagas.len().checked_sub(OPEN).map(|i| &sagas[i]) {
            h.outcome(oldest).await;
        }
        if n == sagas_to_run / 3 {
            for name in SERVICES {
                h.kill(name);
                let replacement = instance(&h, name).await;
                h.running.insert(name, replacement);
            }
        }
        let plan = Plan::of(n);
        let (amount, sku, timeout) = plan.order();
        let (order_id, saga) = h.place_order_within(amount, sku, h.units(timeout)).await;
        sagas.push((plan, order_id, saga));
    }

    let mut ended: HashMap<&str, usize> = HashMap::new();
    for &(plan, order_id, saga) in &sagas {
        let outcome = h.outcome(saga).await;
        let context = || format!("order {order_id} ({plan:?}):\n{}", h.log.timeline(saga));
        let effects = sorted_effects(h.effects(order_id).await);
        let expected = match plan {
            Plan::Completes => {
                assert_eq!(outcome, SagaOutcome::Completed, "{}", context());
                every_forward_step_once(order_id)
            }
            Plan::OverCreditLimit => {
                assert_eq!(outcome, compensated(AbortReason::Rejected), "{}", context());
                vec![
                    effect("orders", "create_order", order_id),
                    effect("orders", "cancel_order", order_id),
                ]
            }
            Plan::OutOfStock => {
                assert_eq!(outcome, compensated(AbortReason::Rejected), "{}", context());
                vec![
                    effect("orders", "create_order", order_id),
                    effect("orders", "cancel_order", order_id),
                    effect("payments", "reserve_credit", order_id),
                    effect("payments", "release_credit", order_id),
                ]
            }
            Plan::TimesOut => {
                assert_eq!(outcome, compensated(AbortReason::TimedOut), "{}", context());
                let abort = h
                    .log
                    .events(saga)
                    .into_iter()
                    .find(|event| event.kind == SagaKind::Abort)
                    .unwrap();
                assert!(
                    // Sixty sagas in flight over nine instances on two cores: more time
                    // for the handling than one saga alone needs.
                    abort.time <= taken_over_by(&h, &abort, Duration::from_secs(2)),
                    "order {order_id} aborted {:?} after its deadline",
                    abort.time.duration_since(abort.deadline.instant())
                );
                // The deadline may pass before payments reserves the credit, and inventory's
                // slow step may reserve the stock before the abort reaches it or not at all:
                // whatever was done is undone, once.
                let mut expected = vec![
                    effect("orders", "create_order", order_id),
                    effect("orders", "cancel_order", order_id),
                ];
                for (service, done, undone) in [
                    ("payments", "reserve_credit", "release_credit"),
                    ("inventory", "reserve_stock", "release_stock"),
                ] {
                    if effects.contains(&effect(service, done, order_id)) {
                        expected.push(effect(service, done, order_id));
                        expected.push(effect(service, undone, order_id));
                    }
                }
                expected
            }
        };
        assert_eq!(
            effects,
            sorted_effects(expected),
            "order {order_id} ({plan:?})"
        );
        *ended.entry(outcome_name(&outcome)).or_default() += 1;
    }
    assert_eq!(
        ended.values().sum::<usize>(),
        sagas_to_run as usize,
        "every saga ended: {ended:?}"
    );
    drop(others);
}

fn outcome_name(outcome: &SagaOutcome) -> &'static str {
    match outcome {
        SagaOutcome::Completed => "completed",
        _ => "compensated",
    }
}

//! What a store keeps (docs/stores.md): a service killed at any point of a handling and
//! started again on its store loses nothing and repeats nothing; its deadline timers come
//! back; a saga started in the caller's transaction starts if, and only if, it commits;
//! finished sagas are purged after the retention, and their late duplicates are ignored.
//!
//! On the memory store a "restart" keeps the store's object, as a process that survived
//! would: what these tests show there is the runtime's part. On SQLite and PostgreSQL the
//! restarted service opens its database again and the business effects are rows written in
//! the handling's transaction, so the tests show what the database kept.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use choreo::journal::CompensationState;
use choreo::{AbortReason, Event, SagaAborted, SagaId, SagaKind, SagaOutcome, SagaStatus};
use common::*;

/// Every scenario on each backend named, plus the ones listed after it.
macro_rules! durability_on {
    ($($backend:ident: [$($more:ident),*];)*) => {
        scenarios! {
            $(
                $backend: [
                    a_crash_before_the_step_runs_loses_nothing,
                    a_crash_after_the_commit_before_the_publish_publishes_on_restart,
                    a_crash_after_the_publish_before_the_ack_repeats_nothing,
                    a_deadline_fires_from_a_recovered_timer,
                    a_start_in_a_rolled_back_transaction_never_happens,
                    a_start_the_broker_refused_is_published_once_it_can_be,
                    an_unpublished_start_is_published_after_a_restart_under_its_id,
                    a_start_whose_caller_stops_waiting_is_published_all_the_same,
                    a_finished_saga_is_purged_after_the_retention_and_its_late_duplicates_are_ignored,
                    $($more),*
                ];
            )*
        }
    };
}

// A step's business write rolls back with a crash only where it is written in the
// handling's transaction: on the SQL stores.
durability_on! {
    memory: [];
    memory_sqlite: [a_crash_after_the_steps_business_write_rolls_it_back];
    memory_postgres: [a_crash_after_the_steps_business_write_rolls_it_back];
    rabbitmq: [];
    rabbitmq_sqlite: [a_crash_after_the_steps_business_write_rolls_it_back];
    rabbitmq_postgres: [a_crash_after_the_steps_business_write_rolls_it_back];
}

async fn a_crash_before_the_step_runs_loses_nothing(backend: Backend) {
    crash_and_restart_inventory(backend, CrashPoint::BeforeStep).await;
}

async fn a_crash_after_the_steps_business_write_rolls_it_back(backend: Backend) {
    crash_and_restart_inventory(backend, CrashPoint::AfterBusinessWrite).await;
}

async fn a_crash_after_the_commit_before_the_publish_publishes_on_restart(backend: Backend) {
    crash_and_restart_inventory(backend, CrashPoint::AfterCommit).await;
}

async fn a_crash_after_the_publish_before_the_ack_repeats_nothing(backend: Backend) {
    crash_and_restart_inventory(backend, CrashPoint::AfterPublish).await;
}

/// Two sagas, inventory killed at `point` in each: one completes, one is rejected after
/// inventory's step, so the step done across the crash is compensated. Each business effect
/// happens once, each compensation once, and every participant's journal agrees.
async fn crash_and_restart_inventory(backend: Backend, point: CrashPoint) {
    let mut h = Harness::start(backend).await;
    // Room for a broker to hand the killed consumer's events to the new one.
    let patient = h.units(60);

    let (completed, completed_saga) = crash_once(&mut h, point, patient).await;
    assert_eq!(h.outcome(completed_saga).await, SagaOutcome::Completed);

    h.world.set(|b| b.reject_confirmation = true);
    let (rejected, rejected_saga) = crash_once(&mut h, point, patient).await;
    assert_eq!(
        h.outcome(rejected_saga).await,
        compensated(AbortReason::Rejected)
    );
    h.settle().await;

    // Business effects, as committed: every step once; each undo once.
    assert_eq!(
        h.effects(completed).await,
        every_forward_step_once(completed)
    );
    let mut undone = every_forward_step_once(rejected);
    undone.pop(); // orders refused to confirm
    undone.extend([
        effect("payments", "refund_payment", rejected),
        effect("payments", "release_credit", rejected),
        effect("inventory", "release_stock", rejected),
        effect("orders", "cancel_order", rejected),
    ]);
    assert_eq!(
        sorted_effects(h.effects(rejected).await),
        sorted_effects(undone)
    );

    // The events: each one once, save StockReserved, which a restart may publish again
    // under the same id.
    assert_eq!(distinct_flow(&h, completed_saga), completed_flow());
    let flow = distinct_flow(&h, rejected_saga);
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
    assert_eq!(
        sorted(flow[5..].to_vec()),
        sorted(SERVICES.iter().map(|s| ev(s, COMPENSATED)).collect())
    );
    for saga in [completed_saga, rejected_saga] {
        let events = h.log.events(saga);
        let stock: Vec<_> = events
            .iter()
            .filter(|e| e.event_type == StockReserved::TYPE)
            .collect();
        assert!(
            stock.iter().all(|e| **e == *stock[0]),
            "one StockReserved event"
        );
        assert!(
            events
                .iter()
                .filter(|e| e.event_type != StockReserved::TYPE)
                .count()
                == if saga == completed_saga { 4 } else { 7 },
            "only StockReserved may come twice: {}",
            h.log.timeline(saga)
        );
    }

    // Journals: inventory recorded its step once in each saga, and undid it once.
    let inventory = h.record("inventory", completed_saga).await.unwrap();
    assert_eq!(inventory.status, SagaStatus::Completed);
    assert_eq!(step_types(&inventory), [StockReserved::TYPE]);
    let inventory = h.record("inventory", rejected_saga).await.unwrap();
    assert_eq!(step_types(&inventory), [StockReserved::TYPE]);
    assert_eq!(
        inventory.steps[0].compensation,
        CompensationState::Compensated
    );
    for service in SERVICES {
        let record = h.record(service, rejected_saga).await.unwrap();
        assert_eq!(
            record.status,
            SagaStatus::Aborted {
                reason: AbortReason::Rejected
            },
            "{service}"
        );
        assert!(record.compensation_acknowledged, "{service}");
        assert_eq!(
            h.record(service, completed_saga).await.unwrap().status,
            SagaStatus::Completed,
            "{service}"
        );
    }
    let acks = acknowledgements(&h, rejected_saga);
    assert_eq!(acks["inventory"].compensated, [StockReserved::TYPE]);
}

/// Starts inventory to stop at `point`, places an order, kills inventory there and starts
/// it again on its store.
async fn crash_once(h: &mut Harness, point: CrashPoint, timeout: Duration) -> (u64, SagaId) {
    h.start_inventory_to_crash_at(point, h.next_order_id())
        .await;
    let order = h.place_order_within(2_500, "book", timeout).await;
    tokio::time::timeout(h.units(100), h.world.stalls.reached())
        .await
        .unwrap_or_else(|_| panic!("inventory never reached {point:?}"));
    h.kill("inventory");
    h.start_service("inventory").await;
    order
}

/// The saga's flow with each event once, by id, in the order first seen.
fn distinct_flow(h: &Harness, saga: SagaId) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    h.log
        .events(saga)
        .into_iter()
        .filter(|event| seen.insert(event.id))
        .map(|event| (event.source, event.event_type))
        .collect()
}

/// Every service stops after payments' step of the slow-supplier saga; only payments comes
/// back, after the deadline: its recovered timer fires, it aborts the saga and compensates.
/// Then the others come back and compensate too.
async fn a_deadline_fires_from_a_recovered_timer(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), h.units(15));
    });
    let (order, saga) = h.place_order(2_500, "slow").await;
    h.log
        .wait_until(saga, |events| {
            events.iter().any(|e| e.event_type == CreditReserved::TYPE)
        })
        .await;
    for service in SERVICES {
        h.kill(service);
    }
    let deadline = h.record("payments", saga).await.unwrap().deadline;
    tokio::time::sleep(deadline.remaining(choreo::Clock::now(&h.clock)) + h.units(2)).await;

    h.start_service("payments").await;
    assert_eq!(
        h.outcome_among(saga, &["payments"]).await,
        compensated(AbortReason::TimedOut)
    );
    let events = h.log.events(saga);
    let aborts: Vec<_> = events
        .iter()
        .filter(|e| e.kind == SagaKind::Abort)
        .collect();
    assert_eq!(aborts.len(), 1, "{}", h.log.timeline(saga));
    assert_eq!(aborts[0].source, "payments");
    assert!(aborts[0].time >= deadline.instant());
    let aborted: SagaAborted = data(aborts[0]);
    assert_eq!(aborted.reason, AbortReason::TimedOut);
    assert_eq!(
        acknowledgements(&h, saga)["payments"].compensated,
        [CreditReserved::TYPE]
    );
    let payments = h.record("payments", saga).await.unwrap();
    assert_eq!(
        payments.status,
        SagaStatus::Aborted {
            reason: AbortReason::TimedOut
        }
    );
    assert!(payments.abort_published && payments.compensation_acknowledged);
    assert_eq!(
        payments.steps[0].compensation,
        CompensationState::Compensated
    );
    assert_eq!(
        h.effects(order).await,
        [
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("payments", "release_credit", order),
        ]
    );

    // Back up, orders and inventory find the abort and undo their part (inventory had not
    // finished its step: it has nothing to undo, and does not start it past the deadline).
    h.start_service("inventory").await;
    h.start_service("orders").await;
    assert_eq!(h.outcome(saga).await, compensated(AbortReason::TimedOut));
    h.settle().await;
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
    assert_eq!(acks["orders"].compensated, [OrderPlaced::TYPE]);
    assert!(acks["inventory"].compensated.is_empty());
    for service in SERVICES {
        let record = h.record(service, saga).await.unwrap();
        assert!(
            record.is_aborted() && record.compensation_acknowledged,
            "{service}"
        );
    }
    // One abort in all: the others learned of it rather than firing their own.
    let aborts = h
        .log
        .events(saga)
        .into_iter()
        .filter(|e| e.kind == SagaKind::Abort)
        .map(|e| e.id)
        .collect::<HashSet<_>>();
    assert_eq!(aborts.len(), 1, "{}", h.log.timeline(saga));
}

/// A saga started in a transaction that rolls back never starts, and the caller's own
/// write is gone with it.
async fn a_start_in_a_rolled_back_transaction_never_happens(backend: Backend) {
    let h = Harness::start(backend).await;
    let orders = &h.running["orders"];
    let mut tx = orders.begin();
    h.world.record_in(&tx, "orders", "create_order", 41).await;
    let saga = tx
        .start_saga(OrderPlaced {
            order_id: 41,
            amount_cents: 2_500,
            sku: "book".into(),
        })
        .unwrap();
    tx.rollback().await.unwrap();

    let (order, committed) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(committed).await, SagaOutcome::Completed);
    h.settle().await;
    assert!(h.log.events(saga).is_empty(), "{}", h.log.timeline(saga));
    assert_eq!(h.record("orders", saga).await, None);
    if h.world.is_transactional() {
        assert!(h.effects(41).await.is_empty());
    }
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
}

/// The broker refuses the start for a while: the saga is started all the same, and its
/// start published once the broker takes it.
async fn a_start_the_broker_refused_is_published_once_it_can_be(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.running.remove("orders").unwrap().shutdown().await;
    let refusing = Arc::new(faults::Faulty::new(
        h.own_connection().await,
        Arc::clone(&h.world),
        "none",
        "none",
    ));
    refusing.refuse_publishes(3);
    h.start_on("orders", refusing.clone()).await;

    let (order, saga) = h.place_order(2_500, "book").await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert_eq!(refusing.refused(), 3);
    h.settle().await;
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    let start = &h.log.events(saga)[0];
    assert_eq!((start.kind, start.saga_id), (SagaKind::Start, saga));
    assert_eq!(h.flow(saga).len(), 5);
}

/// The broker is slow to take a start, and its caller gives up waiting: the saga is started
/// all the same, published, timed, and runs to its end.
async fn a_start_whose_caller_stops_waiting_is_published_all_the_same(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.running.remove("orders").unwrap().shutdown().await;
    let slow = Arc::new(faults::Faulty::new(
        h.own_connection().await,
        Arc::clone(&h.world),
        OrderPlaced::TYPE,
        "none",
    ));
    slow.slow_publishes(h.units(2));
    h.start_on("orders", slow).await;

    let order = OrderPlaced {
        order_id: 77,
        amount_cents: 2_500,
        sku: "book".into(),
    };
    let given_up = tokio::time::timeout(h.units(1), h.running["orders"].start_saga(order)).await;
    assert!(
        given_up.is_err(),
        "the caller gave up before the broker took the start"
    );

    let saga = h.wait_for_a_saga().await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settle().await;
    assert_eq!(distinct_flow(&h, saga), completed_flow());
    let mut effects = every_forward_step_once(77);
    effects.remove(0); // the caller created no order row: it only started the saga
    assert_eq!(h.effects(77).await, effects);
    assert_eq!(
        h.record("orders", saga).await.unwrap().status,
        SagaStatus::Completed
    );
}

/// Orders dies after committing a start and before publishing it; started again, it
/// publishes it, once, under the saga id it gave out.
async fn an_unpublished_start_is_published_after_a_restart_under_its_id(backend: Backend) {
    let mut h = Harness::start(backend).await;
    h.running.remove("orders").unwrap().shutdown().await;
    h.world
        .stalls
        .arm(CrashPoint::AfterCommit, h.next_order_id());
    let stalling = Arc::new(faults::Faulty::new(
        h.own_connection().await,
        Arc::clone(&h.world),
        OrderPlaced::TYPE,
        "none",
    ));
    h.start_on("orders", stalling).await;

    let placing = async { h.place_order_within(2_500, "book", h.units(60)).await };
    let stalled = tokio::time::timeout(h.units(10), placing).await;
    assert!(stalled.is_err(), "the start was published");
    h.kill("orders");
    assert!(h.log.sagas().is_empty());
    h.start_service("orders").await;

    let saga = h.wait_for_a_saga().await;
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    h.settle().await;
    assert_eq!(h.log.sagas(), [saga]);
    let order = data::<OrderPlaced>(&h.log.events(saga)[0]).order_id;
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    assert_eq!(h.flow(saga).len(), 5);
    assert_eq!(
        h.record("orders", saga).await.unwrap().status,
        SagaStatus::Completed
    );
}

/// A finished saga's records and inbox ids go once its deadline is older than the
/// retention. A late duplicate of its events then is past its deadline: nothing runs,
/// nothing is recorded again, nothing is published.
async fn a_finished_saga_is_purged_after_the_retention_and_its_late_duplicates_are_ignored(
    backend: Backend,
) {
    let retention = backend.units(20);
    let mut h = Harness::prepare(backend).await;
    h.tune(|options| {
        options
            .retention(retention)
            .purge_interval(backend.units(1))
    });
    h.start_all().await;
    let (order, saga) = h.place_order(2_500, "book").await;
    let (rejected, aborted) = {
        h.world.set(|b| {
            b.out_of_stock.insert("vinyl".into());
        });
        h.place_order(2_500, "vinyl").await
    };
    assert_eq!(h.outcome(saga).await, SagaOutcome::Completed);
    assert!(matches!(
        h.outcome(aborted).await,
        SagaOutcome::Compensated { .. }
    ));
    let events = h.log.events(saga);
    for service in SERVICES {
        assert!(h.record(service, saga).await.is_some());
    }
    assert!(h.handled("payments", &events[0]).await);

    let deadline = events[0].deadline;
    tokio::time::sleep(deadline.remaining(choreo::Clock::now(&h.clock)) + retention + h.units(3))
        .await;
    for service in SERVICES {
        assert_eq!(h.record(service, saga).await, None, "{service}");
        assert_eq!(h.record(service, aborted).await, None, "{service}");
    }
    for event in &events {
        for service in SERVICES {
            assert!(
                !h.handled(service, event).await,
                "{service} kept {}",
                event.event_type
            );
        }
    }

    // The broker delivers every event of both sagas again, long after.
    let before = (h.log.events(saga).len(), h.log.events(aborted).len());
    for event in h.log.events(saga).into_iter().chain(h.log.events(aborted)) {
        h.publish(event).await;
    }
    h.settle().await;
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    assert_eq!(
        h.effects(rejected).await.len(),
        4,
        "reserve_credit and create_order, each undone once"
    );
    assert_eq!(
        (h.log.events(saga).len(), h.log.events(aborted).len()),
        (2 * before.0, 2 * before.1),
        "only the redelivered events: no service published anything"
    );
    for service in SERVICES {
        assert_eq!(h.record(service, saga).await, None, "{service}");
        assert_eq!(h.record(service, aborted).await, None, "{service}");
    }
}

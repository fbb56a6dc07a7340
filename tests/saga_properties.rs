//! Property test (docs/concepts.md rules 5, 6 and 9): whatever the broker does to one saga's
//! events (duplicates, any delivery order), every saga ends completed or fully compensated, no
//! compensation runs twice and no step runs after its service saw the abort.

mod common;

use std::time::Duration;

use choreo::journal::CompensationState;
use choreo::memory::{Chaos, MemoryTransport};
use choreo::{SagaOutcome, SagaStatus};
use common::*;
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Scenario {
    Completes,
    InventoryRejects,
    ConfirmationRejected,
    InventoryTooSlow,
    InventoryKeepsFailing,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop_oneof![
        Just(Scenario::Completes),
        Just(Scenario::InventoryRejects),
        Just(Scenario::ConfirmationRejected),
        Just(Scenario::InventoryTooSlow),
        Just(Scenario::InventoryKeepsFailing),
    ]
}

/// Forward effects and the compensation that undoes each.
const UNDO: [(&str, &str, &str); 4] = [
    ("orders", "create_order", "cancel_order"),
    ("payments", "reserve_credit", "release_credit"),
    ("payments", "capture_payment", "refund_payment"),
    ("inventory", "reserve_stock", "release_stock"),
];

/// How the services behave in one case.
#[derive(Debug, Clone, Copy)]
struct Case {
    scenario: Scenario,
    refund_failures: u32,
    /// Payments and inventory take this long, so that some sagas finish just before their
    /// deadline and some just after, with events in flight when the abort is published.
    credit_delay: Duration,
    stock_delay: Duration,
}

fn case() -> impl Strategy<Value = Case> {
    (scenario(), 0u32..3, 0u64..12_000, 0u64..6_000).prop_map(
        |(scenario, refund_failures, credit_ms, stock_ms)| Case {
            scenario,
            refund_failures,
            credit_delay: Duration::from_millis(credit_ms),
            stock_delay: Duration::from_millis(stock_ms),
        },
    )
}

async fn run(seed: u64, duplicate_percent: u8, reorder: bool, max_delay_ms: u64, case: Case) {
    let Case {
        scenario,
        refund_failures,
        credit_delay,
        stock_delay,
    } = case;
    let chaos = Chaos::seeded(seed)
        .duplicate_percent(duplicate_percent)
        .reorder(reorder)
        .max_delay(Duration::from_millis(max_delay_ms));
    let h = Harness::memory_with(MemoryTransport::with_chaos(chaos)).await;
    h.world.set(|b| {
        b.refund_failures = refund_failures;
        b.credit_delay = credit_delay;
        b.slow_skus.insert("book".into(), stock_delay);
        match scenario {
            Scenario::Completes => {}
            Scenario::InventoryRejects => {
                b.out_of_stock.insert("book".into());
            }
            Scenario::ConfirmationRejected => b.reject_confirmation = true,
            Scenario::InventoryTooSlow => {
                b.slow_skus.insert("book".into(), Duration::from_secs(15));
            }
            Scenario::InventoryKeepsFailing => b.inventory_transient_failures = u32::MAX,
        }
    });
    let (order, saga) = h.place_order(2_500, "book").await;
    h.settle().await;

    let outcome = h.log.outcome(saga, &SERVICES);
    let effects = h.effects(order).await;
    let count = |service: &str, action: &str| {
        effects
            .iter()
            .filter(|e| e.service == service && e.action == action)
            .count()
    };
    let context = || {
        format!(
            "{scenario:?}: {outcome:?}\n{effects:#?}\n{}",
            h.log.timeline(saga)
        )
    };

    for (service, forward, undo) in UNDO {
        assert!(
            count(service, forward) <= 1,
            "{forward} ran twice: {}",
            context()
        );
        assert!(count(service, undo) <= 1, "{undo} ran twice: {}", context());
    }
    match &outcome {
        Some(SagaOutcome::Completed) => {
            assert!(matches!(scenario, Scenario::Completes), "{}", context());
            for (service, forward, undo) in UNDO {
                assert_eq!(count(service, forward), 1, "{}", context());
                assert_eq!(count(service, undo), 0, "{}", context());
            }
            for service in SERVICES {
                let record = h.record(service, saga).await.unwrap();
                assert_eq!(
                    record.status,
                    SagaStatus::Completed,
                    "{service}: {}",
                    context()
                );
            }
        }
        Some(SagaOutcome::Compensated { failed, .. }) => {
            assert!(failed.is_empty(), "{}", context());
            // Fully compensated: every effect undone, exactly once.
            for (service, forward, undo) in UNDO {
                assert_eq!(
                    count(service, forward),
                    count(service, undo),
                    "{undo}: {}",
                    context()
                );
            }
            for service in SERVICES {
                let record = h.record(service, saga).await.unwrap();
                assert!(record.is_aborted(), "{service}: {}", context());
                assert!(record.compensation_acknowledged, "{service}: {}", context());
                // A step that ran after this service handled the abort would be recorded
                // and never compensated.
                for step in &record.steps {
                    assert!(
                        matches!(
                            step.compensation,
                            CompensationState::Compensated | CompensationState::NotRequired
                        ),
                        "{service} ran {} after the abort: {}",
                        step.output.event_type,
                        context()
                    );
                }
            }
        }
        None => panic!("the saga did not end: {}", context()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_saga_ends_completed_or_fully_compensated(
        seed in any::<u64>(),
        duplicate_percent in 0u8..60,
        reorder in any::<bool>(),
        max_delay_ms in 0u64..3_000,
        case in case(),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(seed, duplicate_percent, reorder, max_delay_ms, case));
    }
}

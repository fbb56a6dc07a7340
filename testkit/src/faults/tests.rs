use std::sync::Arc;
use std::time::{Duration, SystemTime};

use choreo_core::store::{Commit, Handled, MemoryStore};
use choreo_core::{
    Deadline, Delivery, Envelope, EventId, SagaId, SagaKind, Store, Subscription, TraceContext,
    Transport,
};
use choreo_memory::MemoryTransport;
use serde_json::value::RawValue;

use super::Faults;

const TOPIC: &str = "faults.saga";

fn event(n: u32) -> Envelope {
    Envelope {
        id: EventId::new(),
        source: "test".into(),
        event_type: "test.Numbered.v1".into(),
        time: SystemTime::now(),
        saga_id: SagaId::new(),
        causation_id: None,
        joined_causes: Vec::new(),
        deadline: Deadline::after(SystemTime::now(), Duration::from_secs(60)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(n.to_string()).unwrap(),
        saga_data: Default::default(),
    }
}

fn number(delivery: &Delivery) -> u32 {
    Envelope::decode(&delivery.message)
        .unwrap()
        .data
        .get()
        .parse()
        .unwrap()
}

async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), subscription.next())
        .await
        .expect("a delivery")
        .unwrap()
}

async fn nothing_next(subscription: &mut Box<dyn Subscription>) {
    let next = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
    assert!(next.is_err(), "expected no delivery");
}

/// A faulty transport on a fresh in-memory broker, subscribed, with `count` events
/// published (numbered from 0) through the real broker.
async fn subscribed(faults: Faults, count: u32) -> (Arc<Faults>, Box<dyn Subscription>) {
    let faults = faults.into_shared();
    let broker: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let faulty = faults.transport(Arc::clone(&broker));
    let subscription = faulty.subscribe("g", &[TOPIC.to_owned()]).await.unwrap();
    for n in 0..count {
        broker.publish(TOPIC, event(n)).await.unwrap();
    }
    (faults, subscription)
}

#[tokio::test(start_paused = true)]
async fn without_faults_deliveries_pass_unchanged() {
    let (faults, mut subscription) = subscribed(Faults::seeded(1), 3).await;
    for n in 0..3 {
        let delivery = next(&mut subscription).await;
        assert_eq!(number(&delivery), n);
        delivery.ack().await.unwrap();
    }
    nothing_next(&mut subscription).await;
    assert_eq!(faults.counts(), Default::default());
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_comes_again_later_and_settling_it_settles_nothing() {
    let faults = Faults::seeded(1)
        .duplicate(1.0)
        .delay(0.0, Duration::from_millis(100));
    let (faults, mut subscription) = subscribed(faults, 1).await;
    let first = next(&mut subscription).await;
    assert!(!first.redelivered);
    first.ack().await.unwrap();
    let copy = next(&mut subscription).await;
    assert_eq!(number(&copy), 0);
    assert!(copy.redelivered);
    copy.nack().await.unwrap();
    nothing_next(&mut subscription).await;
    assert_eq!(faults.counts().duplicated, 1);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_delivery_lets_later_ones_go_first_and_still_comes() {
    let faults = Faults::seeded(3).delay(0.5, Duration::from_millis(100));
    let (faults, mut subscription) = subscribed(faults, 20).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let delivery = next(&mut subscription).await;
        seen.push(number(&delivery));
        delivery.ack().await.unwrap();
    }
    nothing_next(&mut subscription).await;
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>(), "each exactly once");
    assert_ne!(seen, sorted, "some overtaken");
    assert!(faults.counts().delayed > 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_deliveries_and_lost_acks_are_delivered_again() {
    let faults = Faults::seeded(2).drop_unacked(0.5).lose_ack(0.5);
    let (faults, mut subscription) = subscribed(faults, 10).await;
    let mut acked = Vec::new();
    while acked.len() < 10 {
        let delivery = next(&mut subscription).await;
        let n = number(&delivery);
        let lost_before = faults.counts().lost_acks;
        delivery.ack().await.unwrap();
        if faults.counts().lost_acks == lost_before {
            acked.push(n);
        }
    }
    nothing_next(&mut subscription).await;
    acked.sort_unstable();
    assert_eq!(acked, (0..10).collect::<Vec<_>>(), "each acknowledged once");
    let counts = faults.counts();
    assert!(counts.dropped > 0 && counts.lost_acks > 0, "{counts}");
}

#[tokio::test(start_paused = true)]
async fn publishes_fail_at_the_rate_and_throughout_an_outage() {
    let faults = Faults::seeded(1).fail_publish(1.0).into_shared();
    let faulty = faults.transport(Arc::new(MemoryTransport::new()));
    let sent = event(7);
    let error = faulty.publish(TOPIC, sent.clone()).await.unwrap_err();
    assert_eq!(*error.envelope, sent, "the envelope is handed back");

    let faults = Faults::seeded(1).into_shared();
    let faulty = faults.transport(Arc::new(MemoryTransport::new()));
    faults.transport_outage(Duration::from_secs(2));
    assert!(faulty.publish(TOPIC, event(1)).await.is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    faulty.publish(TOPIC, event(2)).await.unwrap();
    assert_eq!(faults.counts().failed_publishes, 1);
}

fn commit(saga: SagaId, event: EventId) -> Commit {
    Commit {
        service: "s".into(),
        saga_id: saga,
        version: 0,
        changes: Vec::new(),
        handled: Some(Handled {
            event_id: event,
            deadline: Deadline::after(SystemTime::now(), Duration::from_secs(60)),
        }),
        outbox: Vec::new(),
        recorded: SystemTime::now(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_commit_applies_nothing_and_a_forgetful_store_forgets_what_was_handled() {
    let (saga, handled) = (SagaId::new(), EventId::new());
    let inner: Arc<dyn Store> = Arc::new(MemoryStore::new());

    let failing = Faults::seeded(1)
        .fail_commit(1.0)
        .into_shared()
        .store(Arc::clone(&inner));
    assert!(failing
        .commit(vec![commit(saga, handled)], None)
        .await
        .is_err());
    assert!(!inner.load("s", saga, Some(handled)).await.unwrap().handled);

    inner
        .commit(vec![commit(saga, handled)], None)
        .await
        .unwrap();
    let forgetful = Faults::seeded(1)
        .forget_handled(true)
        .into_shared()
        .store(inner);
    assert!(
        !forgetful
            .load("s", saga, Some(handled))
            .await
            .unwrap()
            .handled
    );
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_makes_the_same_choices() {
    let choices = |seed| {
        let faults = Faults::seeded(seed);
        (0..32).map(|_| faults.choose(1000)).collect::<Vec<_>>()
    };
    assert_eq!(choices(9), choices(9));
    assert_ne!(choices(9), choices(10));
}

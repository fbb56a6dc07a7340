use std::time::{Duration, SystemTime};

use choreo_core::{Deadline, EventId, Headers, SagaId, SagaKind, TraceContext};
use serde_json::value::RawValue;

use super::*;
use choreo_core::transport::{DEAD_LETTER_REASON_HEADER, DEAD_LETTER_TOPIC_HEADER};

const TOPIC: &str = "orders.saga";

fn event(saga: SagaId, n: u32) -> Envelope {
    Envelope {
        id: EventId::new(),
        source: "test".into(),
        event_type: "test.Numbered.v1".into(),
        time: SystemTime::now(),
        saga_id: saga,
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

async fn subscribe(transport: &MemoryTransport, group: &str) -> Box<dyn Subscription> {
    transport
        .subscribe(group, &[TOPIC.to_owned()])
        .await
        .unwrap()
}

async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(1), subscription.next())
        .await
        .expect("a delivery")
        .unwrap()
}

async fn nothing_next(subscription: &mut Box<dyn Subscription>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(50), subscription.next())
            .await
            .is_err(),
        "expected no delivery"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shared_event_is_encoded_once_for_every_group_that_receives_it() {
    let transport = MemoryTransport::new();
    let mut first = subscribe(&transport, "first").await;
    let mut second = subscribe(&transport, "second").await;
    let sent = Arc::new(event(SagaId::new(), 1));
    transport.publish_shared(TOPIC, &sent).await.unwrap();
    // Both queues hold the publisher's event, not a copy of it.
    assert_eq!(Arc::strong_count(&sent), 2);

    let (one, other) = (next(&mut first).await, next(&mut second).await);
    assert_eq!(Envelope::decode(&one.message).unwrap(), *sent);
    assert!(Arc::ptr_eq(&one.message, &other.message));
    one.ack().await.unwrap();
    other.ack().await.unwrap();
    assert_eq!(Arc::strong_count(&sent), 1);
}

#[tokio::test(start_paused = true)]
async fn a_published_event_arrives_with_every_attribute() {
    let transport = MemoryTransport::new();
    let mut subscription = subscribe(&transport, "g").await;
    let sent = event(SagaId::new(), 1);
    transport.publish(TOPIC, sent.clone()).await.unwrap();

    let delivery = next(&mut subscription).await;
    assert_eq!(delivery.topic, TOPIC);
    assert!(!delivery.redelivered);
    assert_eq!(Envelope::decode(&delivery.message).unwrap(), sent);
    delivery.ack().await.unwrap();
    assert_eq!(transport.pending(TOPIC, "g"), 0);
}

#[tokio::test(start_paused = true)]
async fn every_group_gets_every_event_and_members_of_a_group_share_them() {
    let transport = MemoryTransport::new();
    let mut audit = subscribe(&transport, "audit").await;
    let mut worker_a = subscribe(&transport, "workers").await;
    let mut worker_b = subscribe(&transport, "workers").await;
    for n in 0..4 {
        transport
            .publish(TOPIC, event(SagaId::new(), n))
            .await
            .unwrap();
    }

    let mut audited = Vec::new();
    for _ in 0..4 {
        let delivery = next(&mut audit).await;
        audited.push(number(&delivery));
        delivery.ack().await.unwrap();
    }
    assert_eq!(audited, [0, 1, 2, 3]);

    let mut handled = Vec::new();
    for _ in 0..2 {
        for worker in [&mut worker_a, &mut worker_b] {
            let delivery = next(worker).await;
            handled.push(number(&delivery));
            delivery.ack().await.unwrap();
        }
    }
    handled.sort_unstable();
    assert_eq!(
        handled,
        [0, 1, 2, 3],
        "each event handled once in the group"
    );
    nothing_next(&mut worker_a).await;
    nothing_next(&mut worker_b).await;
}

#[tokio::test(start_paused = true)]
async fn a_nacked_or_dropped_delivery_is_redelivered() {
    let transport = MemoryTransport::new();
    let mut subscription = subscribe(&transport, "g").await;
    transport
        .publish(TOPIC, event(SagaId::new(), 1))
        .await
        .unwrap();

    next(&mut subscription).await.nack().await.unwrap();
    let again = next(&mut subscription).await;
    assert!(again.redelivered);
    drop(again); // a consumer that crashed

    let third = next(&mut subscription).await;
    assert_eq!(number(&third), 1);
    third.ack().await.unwrap();
    nothing_next(&mut subscription).await;
}

#[tokio::test(start_paused = true)]
async fn events_of_one_saga_are_in_flight_one_at_a_time_in_order() {
    let transport = MemoryTransport::new();
    let mut first = subscribe(&transport, "g").await;
    let mut second = subscribe(&transport, "g").await;
    let (saga, other) = (SagaId::new(), SagaId::new());
    transport.publish(TOPIC, event(saga, 1)).await.unwrap();
    transport.publish(TOPIC, event(saga, 2)).await.unwrap();
    transport.publish(TOPIC, event(other, 3)).await.unwrap();

    let one = next(&mut first).await;
    assert_eq!(number(&one), 1);
    // The saga's second event waits for the first; other sagas go on.
    let three = next(&mut second).await;
    assert_eq!(number(&three), 3);
    nothing_next(&mut second).await;

    one.nack().await.unwrap();
    let one_again = next(&mut second).await;
    assert_eq!(number(&one_again), 1, "a redelivery keeps its place");
    one_again.ack().await.unwrap();
    assert_eq!(number(&next(&mut first).await), 2);
    three.ack().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_raw_message_keyed_by_a_saga_id_waits_behind_that_sagas_events() {
    let transport = MemoryTransport::new();
    let mut first = subscribe(&transport, "g").await;
    let mut second = subscribe(&transport, "g").await;
    let saga = SagaId::new();
    transport.publish(TOPIC, event(saga, 1)).await.unwrap();
    let raw = event(SagaId::new(), 2).to_binary();
    transport
        .publish_raw(TOPIC, Some(&saga.to_string()), raw)
        .unwrap();
    let other = event(SagaId::new(), 3).to_binary();
    transport
        .publish_raw(TOPIC, Some("legacy-7"), other.clone())
        .unwrap();
    transport
        .publish_raw(TOPIC, Some("legacy-7"), other)
        .unwrap();

    let one = next(&mut first).await;
    assert_eq!(number(&one), 1);
    let three = next(&mut second).await;
    assert_eq!(
        number(&three),
        3,
        "the raw message of the saga waits for its event"
    );
    nothing_next(&mut second).await;
    one.ack().await.unwrap();
    let two = next(&mut second).await;
    assert_eq!(number(&two), 2);
    nothing_next(&mut first).await;
    three.ack().await.unwrap();
    assert_eq!(
        number(&next(&mut first).await),
        3,
        "a text key orders its messages too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_keeps_the_message_and_its_reason() {
    let transport = MemoryTransport::new();
    let mut subscription = subscribe(&transport, "g").await;
    let mut dlq = transport
        .subscribe("ops", &[dead_letter_topic(TOPIC)])
        .await
        .unwrap();
    transport
        .publish_raw(
            TOPIC,
            None,
            RawMessage {
                headers: Headers::new(),
                body: b"junk".to_vec(),
            },
        )
        .unwrap();

    next(&mut subscription)
        .await
        .dead_letter("not an event")
        .await
        .unwrap();
    nothing_next(&mut subscription).await;
    assert_eq!(transport.pending(TOPIC, "g"), 0);

    let letters = transport.dead_letters(TOPIC);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "not an event");
    assert_eq!(letters[0].message.body, b"junk");
    let letter = next(&mut dlq).await;
    assert_eq!(
        letter.message.header(DEAD_LETTER_REASON_HEADER),
        Some(&b"not an event"[..])
    );
    assert_eq!(
        letter.message.header(DEAD_LETTER_TOPIC_HEADER),
        Some(TOPIC.as_bytes())
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_keeps_what_arrives_while_no_member_listens() {
    let transport = MemoryTransport::new();
    drop(subscribe(&transport, "g").await);
    transport
        .publish(TOPIC, event(SagaId::new(), 7))
        .await
        .unwrap();
    let mut subscription = subscribe(&transport, "g").await;
    assert_eq!(number(&next(&mut subscription).await), 7);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_consumer_wakes_on_publish_and_on_close() {
    let transport = MemoryTransport::new();
    let mut subscription = subscribe(&transport, "g").await;
    let publisher = transport.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        publisher
            .publish(TOPIC, event(SagaId::new(), 1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        publisher.close();
    });
    next(&mut subscription).await.ack().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
    assert!(matches!(closed, Ok(Err(TransportError::Closed))));
    let failed = transport
        .publish(TOPIC, event(SagaId::new(), 2))
        .await
        .unwrap_err();
    assert!(matches!(failed.source, TransportError::Closed));
    assert_eq!(
        number_of(&failed.envelope),
        2,
        "the envelope is handed back"
    );
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn an_ack_wakes_a_waiting_consumer_only_when_it_frees_a_message() {
    use std::task::{Context, Poll, Waker};

    let transport = MemoryTransport::new();
    let mut subscription = subscribe(&transport, "g").await;
    let (alone, busy) = (SagaId::new(), SagaId::new());
    for (saga, n) in [(alone, 1), (busy, 2), (busy, 3)] {
        transport.publish(TOPIC, event(saga, n)).await.unwrap();
    }
    let (first, second) = (next(&mut subscription).await, next(&mut subscription).await);
    assert_eq!((number(&first), number(&second)), (1, 2));

    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(Arc::clone(&wakes));
    let mut waiting = subscription.next();
    assert!(
        waiting
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "3 waits behind 2"
    );
    first.ack().await.unwrap();
    assert_eq!(wakes.count(), 0, "nothing waited behind 1");
    second.ack().await.unwrap();
    assert_eq!(wakes.count(), 1, "3 was freed");
    match waiting.as_mut().poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(Ok(third)) => assert_eq!(number(&third), 3),
        _ => panic!("3 is handed out"),
    }
}

fn number_of(envelope: &Envelope) -> u32 {
    envelope.data.get().parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn shared_brokers_are_found_by_name() {
    let a = MemoryTransport::shared("tests-shared-a");
    let b = MemoryTransport::shared("tests-shared-a");
    let c = MemoryTransport::shared("tests-shared-c");
    let mut on_a = subscribe(&a, "g").await;
    let mut on_c = subscribe(&c, "g").await;
    b.publish(TOPIC, event(SagaId::new(), 1)).await.unwrap();
    assert_eq!(number(&next(&mut on_a).await), 1);
    nothing_next(&mut on_c).await;
}

#[tokio::test(start_paused = true)]
async fn chaos_duplicates_and_reorders_reproducibly() {
    async fn received(seed: u64) -> Vec<u32> {
        let transport =
            MemoryTransport::with_chaos(Chaos::seeded(seed).duplicate_percent(50).reorder(true));
        let mut subscription = subscribe(&transport, "g").await;
        let saga = SagaId::new();
        for n in 0..10 {
            transport.publish(TOPIC, event(saga, n)).await.unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(Ok(delivery)) =
            tokio::time::timeout(Duration::from_millis(10), subscription.next()).await
        {
            seen.push(number(&delivery));
            delivery.ack().await.unwrap();
        }
        seen
    }
    let seen = received(7).await;
    assert_eq!(seen, received(7).await, "same seed, same deliveries");
    assert!(seen.len() > 10, "some duplicated: {seen:?}");
    assert!(
        seen.windows(2).any(|pair| pair[0] > pair[1]),
        "some reordered: {seen:?}"
    );
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, (0..10).collect::<Vec<_>>(), "none lost");
}

#[tokio::test(start_paused = true)]
async fn an_observer_sees_every_event_and_its_group_goes_with_it() {
    let transport = MemoryTransport::new();
    let mut payments = subscribe(&transport, "payments").await;
    let mut observer = transport.observe("log", &[TOPIC.to_owned()]).await.unwrap();
    let saga = SagaId::new();
    transport.publish(TOPIC, event(saga, 1)).await.unwrap();

    let seen = next(&mut observer).await;
    assert_eq!(number(&seen), 1);
    seen.ack().await.unwrap();
    let taken = next(&mut payments).await;
    assert_eq!(
        number(&taken),
        1,
        "the observer took nothing from the group"
    );
    taken.ack().await.unwrap();

    // Another observer of the name keeps the group until it goes too.
    let other = transport.observe("log", &[TOPIC.to_owned()]).await.unwrap();
    drop(observer);
    assert!(transport.bus.lock().groups[TOPIC].contains_key("observer.log"));
    drop(other);
    transport.publish(TOPIC, event(saga, 2)).await.unwrap();
    let groups: Vec<String> = transport.bus.lock().groups[TOPIC].keys().cloned().collect();
    assert_eq!(groups, ["payments"], "nothing kept for the observer");
    assert_eq!(transport.pending(TOPIC, "payments"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_group_joined_for_some_types_receives_those_and_raw_messages() {
    let transport = MemoryTransport::new();
    let placed = "orders.OrderPlaced.v1".to_owned();
    let mut payments = transport
        .subscribe_to_types(
            "payments",
            &[TOPIC.to_owned()],
            std::slice::from_ref(&placed),
        )
        .await
        .unwrap();
    let mut audit = subscribe(&transport, "audit").await;
    let saga = SagaId::new();
    let typed = |n: u32, event_type: &str| Envelope {
        event_type: event_type.to_owned(),
        ..event(saga, n)
    };
    transport.publish(TOPIC, typed(1, &placed)).await.unwrap();
    transport
        .publish(TOPIC, typed(2, "orders.OrderCancelled.v1"))
        .await
        .unwrap();
    let raw = typed(3, "legacy.OrderImported.v1").to_binary();
    transport
        .publish_raw(TOPIC, Some(&saga.to_string()), raw)
        .unwrap();

    for (subscription, expected) in [(&mut payments, vec![1, 3]), (&mut audit, vec![1, 2, 3])] {
        let mut received = Vec::new();
        for _ in &expected {
            let delivery = next(subscription).await;
            received.push(number(&delivery));
            delivery.ack().await.unwrap();
        }
        assert_eq!(received, expected);
        nothing_next(subscription).await;
    }

    // Another member joined for every type widens the group, as a binding would.
    let mut everything = subscribe(&transport, "payments").await;
    transport
        .publish(TOPIC, typed(4, "orders.OrderCancelled.v1"))
        .await
        .unwrap();
    let delivery = next(&mut everything).await;
    assert_eq!(number(&delivery), 4);
    delivery.ack().await.unwrap();
    drop(payments);
}

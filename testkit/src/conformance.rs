//! The transport conformance suite: what every choreo transport must do, written once and run
//! against each (as Watermill's shared Pub/Sub tests are).
//!
//! Implement [`Subject`] for the transport under test and expand [`conformance_tests!`]
//! (crate::conformance_tests) in a test file; every check becomes one test:
//!
//! ```text
//! async fn memory() -> MemorySubject { MemorySubject::new() }
//! choreo_testkit::conformance_tests!(memory);
//! ```
//!
//! Checks use a fresh topic each, so they may share one broker. [`Subscription::next`] must
//! be cancel-safe: the checks race it against timeouts and other subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use choreo_core::transport::{dead_letter_topic, DEAD_LETTER_REASON_HEADER};
use choreo_core::{
    Deadline, Delivery, Envelope, EventId, Headers, RawMessage, SagaId, SagaKind, Subscription,
    TraceContext, Transport,
};
use serde_json::value::RawValue;

/// The transport under test, and what the checks need around it.
#[async_trait]
pub trait Subject: Send + Sync {
    /// A connected transport. Called once or more per check.
    async fn connect(&self) -> Arc<dyn Transport>;

    /// Publishes bytes that need not be a valid event, keyed by `key` if given.
    async fn publish_raw(&self, topic: &str, key: Option<&str>, message: RawMessage);

    /// Whether members of one consumer group split a topic's events between them. A Kafka
    /// topic with one partition gives them all to one member.
    fn splits_work(&self) -> bool {
        true
    }

    /// Stops and starts the broker; `None` where there is no broker to restart.
    async fn restart_broker(&self) -> Option<Result<(), String>> {
        None
    }

    /// How long a check waits for a delivery before it fails.
    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Expands to one `#[tokio::test]` per conformance check, each running against the subject
/// returned by the async fn `$subject`.
#[macro_export]
macro_rules! conformance_tests {
    ($subject:path) => {
        $crate::conformance_tests!(@each $subject;
            round_trip_keeps_every_attribute,
            nacked_and_dropped_deliveries_are_redelivered,
            events_of_one_key_keep_their_order_in_a_group,
            competing_consumers_split_the_work_and_handle_each_event_once,
            every_group_gets_every_event,
            an_observer_sees_every_event_and_takes_none_from_the_groups,
            a_malformed_message_is_dead_lettered_and_the_consumer_goes_on,
            closing_a_consumer_loses_no_acked_event,
            consumers_continue_after_the_broker_restarts,
        );
    };
    (@each $subject:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $subject().await;
                $crate::conformance::$check(&subject).await;
            }
        )*
    };
}

fn fresh_topic() -> String {
    format!("conformance.{}", uuid::Uuid::now_v7().simple())
}

fn event(saga: SagaId, number: u32) -> Envelope {
    let now = SystemTime::now();
    Envelope {
        id: EventId::new(),
        source: "conformance".into(),
        event_type: "conformance.Numbered.v1".into(),
        time: now,
        saga_id: saga,
        causation_id: Some(EventId::new()),
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(300)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(format!("{{\"n\":{number}}}"))
            .unwrap_or_else(|_| unreachable!("a number is JSON")),
        saga_data: Default::default(),
    }
}

fn decoded(delivery: &Delivery) -> Envelope {
    Envelope::decode(&delivery.message)
        .unwrap_or_else(|error| panic!("a conformance event did not decode: {error}"))
}

fn number(envelope: &Envelope) -> u32 {
    let value: serde_json::Value = serde_json::from_str(envelope.data.get()).unwrap_or_default();
    value["n"].as_u64().unwrap_or(u64::MAX) as u32
}

async fn subscribe(
    transport: &Arc<dyn Transport>,
    group: &str,
    topic: &str,
) -> Box<dyn Subscription> {
    transport
        .subscribe(group, &[topic.to_owned()])
        .await
        .unwrap_or_else(|error| panic!("subscribe {group} to {topic}: {error}"))
}

async fn observe(transport: &Arc<dyn Transport>, name: &str, topic: &str) -> Box<dyn Subscription> {
    transport
        .observe(name, &[topic.to_owned()])
        .await
        .unwrap_or_else(|error| panic!("observe {topic} as {name}: {error}"))
}

async fn publish(transport: &Arc<dyn Transport>, topic: &str, envelope: &Envelope) {
    transport
        .publish(topic, envelope.clone())
        .await
        .unwrap_or_else(|error| panic!("publish to {topic}: {error}"));
}

async fn receive(
    subject: &dyn Subject,
    subscription: &mut Box<dyn Subscription>,
    what: &str,
) -> Delivery {
    match tokio::time::timeout(subject.patience(), subscription.next()).await {
        Ok(Ok(delivery)) => delivery,
        Ok(Err(error)) => panic!("waiting for {what}: the subscription failed: {error}"),
        Err(_) => panic!(
            "waiting for {what}: nothing arrived within {:?}",
            subject.patience()
        ),
    }
}

async fn ack(delivery: Delivery) {
    delivery
        .ack()
        .await
        .unwrap_or_else(|error| panic!("ack failed: {error}"));
}

/// Receives and acks until the event numbered `last` arrives; returns what came before it.
async fn drain_until(
    subject: &dyn Subject,
    subscription: &mut Box<dyn Subscription>,
    last: u32,
) -> Vec<u32> {
    let mut before = Vec::new();
    loop {
        let delivery = receive(subject, subscription, &format!("event {last}")).await;
        let n = number(&decoded(&delivery));
        ack(delivery).await;
        if n == last {
            return before;
        }
        before.push(n);
    }
}

/// A published event arrives with every attribute, trace context and data intact, whether
/// it was published as is or shared (`publish_shared`, as the runtime sends).
pub async fn round_trip_keeps_every_attribute(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut subscription = subscribe(&transport, "g", &topic).await;
    let sent = event(SagaId::new(), 1);
    publish(&transport, &topic, &sent).await;

    let delivery = receive(subject, &mut subscription, "the event").await;
    assert_eq!(delivery.topic, topic);
    assert_eq!(decoded(&delivery), sent);
    ack(delivery).await;

    let shared = Arc::new(event(SagaId::new(), 2));
    transport
        .publish_shared(&topic, &shared)
        .await
        .unwrap_or_else(|error| panic!("publish to {topic}: {error}"));
    let delivery = receive(subject, &mut subscription, "the shared event").await;
    assert_eq!(delivery.topic, topic);
    assert_eq!(decoded(&delivery), *shared);
    ack(delivery).await;
}

/// A nacked delivery comes back, and so does one dropped unsettled (a consumer that crashed).
pub async fn nacked_and_dropped_deliveries_are_redelivered(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut subscription = subscribe(&transport, "g", &topic).await;
    let sent = event(SagaId::new(), 1);
    publish(&transport, &topic, &sent).await;

    let first = receive(subject, &mut subscription, "the event").await;
    assert_eq!(decoded(&first).id, sent.id);
    first
        .nack()
        .await
        .unwrap_or_else(|error| panic!("nack failed: {error}"));
    let second = receive(subject, &mut subscription, "the nacked event again").await;
    assert_eq!(decoded(&second).id, sent.id);
    drop(second);
    let third = receive(subject, &mut subscription, "the dropped event again").await;
    assert_eq!(decoded(&third).id, sent.id);
    ack(third).await;

    // Once acked, it is not delivered again: the next delivery is the next event.
    publish(&transport, &topic, &event(SagaId::new(), 2)).await;
    assert_eq!(
        drain_until(subject, &mut subscription, 2).await,
        Vec::<u32>::new()
    );
}

/// Within a group, events with one key (saga id) arrive in publish order.
pub async fn events_of_one_key_keep_their_order_in_a_group(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut subscription = subscribe(&transport, "g", &topic).await;
    let sagas = [SagaId::new(), SagaId::new()];
    for n in 0..20 {
        publish(&transport, &topic, &event(sagas[n as usize % 2], n)).await;
    }

    let mut seen: HashMap<SagaId, Vec<u32>> = HashMap::new();
    for _ in 0..20 {
        let delivery = receive(subject, &mut subscription, "the next event").await;
        let envelope = decoded(&delivery);
        seen.entry(envelope.saga_id)
            .or_default()
            .push(number(&envelope));
        ack(delivery).await;
    }
    assert_eq!(seen[&sagas[0]], (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!(seen[&sagas[1]], (1..20).step_by(2).collect::<Vec<_>>());
}

/// Two members of one group share the events; each event is handled once in the group.
pub async fn competing_consumers_split_the_work_and_handle_each_event_once(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut members = [
        subscribe(&transport, "workers", &topic).await,
        subscribe(&transport, "workers", &topic).await,
    ];
    const EVENTS: u32 = 40;
    for n in 0..EVENTS {
        publish(&transport, &topic, &event(SagaId::new(), n)).await;
    }

    let mut handled_by = [Vec::new(), Vec::new()];
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + subject.patience();
    while seen.len() < EVENTS as usize {
        let [first, second] = &mut members;
        let (member, delivery) = tokio::select! {
            delivery = first.next() => (0, delivery),
            delivery = second.next() => (1, delivery),
            () = tokio::time::sleep_until(deadline) => panic!(
                "only {} of {EVENTS} events arrived within {:?}", seen.len(), subject.patience()
            ),
        };
        let delivery = delivery.unwrap_or_else(|error| panic!("a member failed: {error}"));
        let n = number(&decoded(&delivery));
        assert!(seen.insert(n), "event {n} was handled twice in one group");
        handled_by[member].push(n);
        ack(delivery).await;
        // Give the other member a turn, as separate processes would have.
        tokio::task::yield_now().await;
    }
    if subject.splits_work() {
        assert!(
            !handled_by[0].is_empty() && !handled_by[1].is_empty(),
            "one member did all the work: {handled_by:?}"
        );
    }
}

/// Every consumer group receives every event.
pub async fn every_group_gets_every_event(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut audit = subscribe(&transport, "audit", &topic).await;
    let mut billing = subscribe(&transport, "billing", &topic).await;
    for n in 0..5 {
        publish(&transport, &topic, &event(SagaId::new(), n)).await;
    }
    for group in [&mut audit, &mut billing] {
        let mut got: Vec<u32> = Vec::new();
        for _ in 0..5 {
            let delivery = receive(subject, group, "the group's next event").await;
            got.push(number(&decoded(&delivery)));
            ack(delivery).await;
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }
}

/// An observer receives every event of its topic and takes none from a group; a second
/// observer of another name receives them all too.
pub async fn an_observer_sees_every_event_and_takes_none_from_the_groups(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut billing = subscribe(&transport, "billing", &topic).await;
    let mut log = observe(&transport, "log", &topic).await;
    let mut monitor = observe(&transport, "monitor", &topic).await;
    for n in 0..5 {
        publish(&transport, &topic, &event(SagaId::new(), n)).await;
    }
    for reader in [&mut log, &mut monitor, &mut billing] {
        let mut got: Vec<u32> = Vec::new();
        for _ in 0..5 {
            let delivery = receive(subject, reader, "the reader's next event").await;
            got.push(number(&decoded(&delivery)));
            ack(delivery).await;
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }
}

/// A message that is not an event can be dead-lettered with its reason, and the consumer
/// goes on with the events after it.
pub async fn a_malformed_message_is_dead_lettered_and_the_consumer_goes_on(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut subscription = subscribe(&transport, "g", &topic).await;
    let mut dead_letters = subscribe(&transport, "ops", &dead_letter_topic(&topic)).await;
    let garbage = RawMessage {
        headers: Headers::from([("ce_type", "broken")]),
        body: b"\x00 definitely not json".to_vec(),
    };
    let saga = SagaId::new();
    subject
        .publish_raw(&topic, Some(&saga.to_string()), garbage.clone())
        .await;
    publish(&transport, &topic, &event(saga, 1)).await;

    // Take deliveries until the malformed one, and dead-letter it.
    let mut seen = Vec::new();
    let reason = loop {
        let delivery = receive(subject, &mut subscription, "the malformed message").await;
        match Envelope::decode(&delivery.message) {
            Ok(envelope) => {
                seen.push(number(&envelope));
                ack(delivery).await;
            }
            Err(error) => {
                assert_eq!(delivery.message.body, garbage.body);
                let reason = format!("malformed event: {error}");
                delivery
                    .dead_letter(&reason)
                    .await
                    .unwrap_or_else(|error| panic!("dead-lettering failed: {error}"));
                break reason;
            }
        }
    };
    // The consumer goes on: the event published behind it, and one published after, arrive.
    publish(&transport, &topic, &event(saga, 2)).await;
    seen.extend(drain_until(subject, &mut subscription, 2).await);
    assert_eq!(seen, [1]);

    let letter = receive(subject, &mut dead_letters, "the dead letter").await;
    assert_eq!(letter.message.body, garbage.body);
    assert_eq!(
        letter.message.header(DEAD_LETTER_REASON_HEADER),
        Some(reason.as_bytes())
    );
    ack(letter).await;
}

/// A consumer that goes away while holding an unacked event loses nothing: the group's next
/// member gets that event and the rest, and none it had acked.
pub async fn closing_a_consumer_loses_no_acked_event(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut first = subscribe(&transport, "g", &topic).await;
    let sagas = [SagaId::new(), SagaId::new(), SagaId::new()];
    for (n, saga) in sagas.iter().enumerate() {
        publish(&transport, &topic, &event(*saga, n as u32)).await;
    }
    let first_delivery = receive(subject, &mut first, "the first event").await;
    let acked = decoded(&first_delivery);
    ack(first_delivery).await;
    let held = receive(subject, &mut first, "the second event").await;
    drop(first);
    drop(held);

    // A marker with the acked event's key comes after it in any per-key order: had the acked
    // event been delivered again, it would arrive before the marker.
    let mut second = subscribe(&transport, "g", &topic).await;
    publish(&transport, &topic, &event(acked.saga_id, 99)).await;
    let expected: HashSet<u32> = (0..3).filter(|n| *n != number(&acked)).collect();
    let mut got = HashSet::new();
    let mut marker = false;
    while !(marker && got.is_superset(&expected)) {
        let delivery = receive(subject, &mut second, "the unacked events and the marker").await;
        let n = number(&decoded(&delivery));
        ack(delivery).await;
        assert_ne!(
            n,
            number(&acked),
            "event {n} was acked, yet delivered again"
        );
        if n == 99 {
            marker = true;
        } else {
            got.insert(n);
        }
    }
}

/// After the broker restarts, publishing and consuming continue on the same transport and
/// subscription.
pub async fn consumers_continue_after_the_broker_restarts(subject: &dyn Subject) {
    let transport = subject.connect().await;
    let topic = fresh_topic();
    let mut subscription = subscribe(&transport, "g", &topic).await;
    publish(&transport, &topic, &event(SagaId::new(), 1)).await;
    ack(receive(subject, &mut subscription, "the event before the restart").await).await;

    match subject.restart_broker().await {
        None => return, // no broker to restart
        Some(Err(error)) => panic!("cannot restart the broker: {error}"),
        Some(Ok(())) => {}
    }
    let after = event(SagaId::new(), 2);
    let deadline = tokio::time::Instant::now() + subject.patience();
    while let Err(error) = transport.publish(&topic, after.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing after the restart still fails: {error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        drain_until(subject, &mut subscription, 2).await,
        Vec::<u32>::new()
    );
}

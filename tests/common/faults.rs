//! A transport around the real one that stops a service at a crash point of the runtime's
//! own: after a handling committed but before its event is published, or after the
//! publish but before the event it handled is acknowledged. The test then kills the
//! service there, as a crash would. It also notes the type of every event it delivers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use choreo::async_trait;
use choreo::transport::{publish_through_shared, Acknowledge};
use choreo::{
    Delivery, Envelope, PublishError, RawMessage, Subscription, Transport, TransportError,
};

use super::world::{CrashPoint, World};

pub struct Faulty {
    inner: Arc<dyn Transport>,
    world: Arc<World>,
    /// The event type whose publish stops at `AfterCommit`.
    published: &'static str,
    /// The event type whose acknowledgement stops at `AfterPublish`.
    acknowledged: &'static str,
    /// Publishes still to refuse, as a broker that is down would.
    refusing: AtomicU32,
    refused: AtomicU32,
    /// How long a publish of `published` takes, as a slow broker's would.
    slow: std::sync::Mutex<Option<std::time::Duration>>,
    /// The type of every event delivered, in order.
    delivered: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Faulty {
    fn faulty(&self, inner: Box<dyn Subscription>) -> Box<dyn Subscription> {
        Box::new(FaultySubscription {
            inner,
            world: Arc::clone(&self.world),
            acknowledged: self.acknowledged,
            delivered: Arc::clone(&self.delivered),
        })
    }

    pub fn new(
        inner: Arc<dyn Transport>,
        world: Arc<World>,
        published: &'static str,
        acknowledged: &'static str,
    ) -> Self {
        Self {
            inner,
            world,
            published,
            acknowledged,
            refusing: AtomicU32::new(0),
            refused: AtomicU32::new(0),
            slow: std::sync::Mutex::default(),
            delivered: Arc::default(),
        }
    }

    /// The type of every event delivered so far (undecodable messages left out), in order.
    pub fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }

    /// Makes every publish of the `published` type take `delay`.
    pub fn slow_publishes(&self, delay: std::time::Duration) {
        *self.slow.lock().unwrap() = Some(delay);
    }

    /// Refuses the next `count` publishes, as a broker that is down does.
    pub fn refuse_publishes(&self, count: u32) {
        self.refusing.store(count, Ordering::SeqCst);
    }

    /// How many publishes were refused.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Transport for Faulty {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn publish(&self, topic: &str, envelope: Envelope) -> Result<(), PublishError> {
        publish_through_shared(self, topic, envelope).await
    }

    async fn publish_shared(
        &self,
        topic: &str,
        envelope: &Arc<Envelope>,
    ) -> Result<(), TransportError> {
        if envelope.event_type == self.published {
            let order = order_id(envelope.data.get());
            self.world.stalls.at(CrashPoint::AfterCommit, order).await;
            let delay = *self.slow.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
        let refuse = self
            .refusing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if refuse {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(TransportError::Connection(
                "the broker is down (refused by the test)".into(),
            ));
        }
        self.inner.publish_shared(topic, envelope).await
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let inner = self.inner.subscribe(group, topics).await?;
        Ok(self.faulty(inner))
    }

    async fn subscribe_to_types(
        &self,
        group: &str,
        topics: &[String],
        types: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let inner = self.inner.subscribe_to_types(group, topics, types).await?;
        Ok(self.faulty(inner))
    }

    async fn dead_letter(
        &self,
        topic: &str,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.inner.dead_letter(topic, message, reason).await
    }
}

struct FaultySubscription {
    inner: Box<dyn Subscription>,
    world: Arc<World>,
    acknowledged: &'static str,
    delivered: Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        let delivery = self.inner.next().await?;
        let event_type = Envelope::decode(&delivery.message)
            .ok()
            .map(|envelope| envelope.event_type);
        if let Some(event_type) = &event_type {
            self.delivered.lock().unwrap().push(event_type.clone());
        }
        if event_type.as_deref() != Some(self.acknowledged) {
            return Ok(delivery);
        }
        let (topic, message, redelivered) = (
            delivery.topic.clone(),
            Arc::clone(&delivery.message),
            delivery.redelivered,
        );
        Ok(Delivery::new(
            topic,
            message,
            redelivered,
            Box::new(StallingAck {
                delivery,
                world: Arc::clone(&self.world),
            }),
        ))
    }
}

/// Acknowledges through the real delivery, unless `AfterPublish` is armed.
struct StallingAck {
    delivery: Delivery,
    world: Arc<World>,
}

#[async_trait]
impl Acknowledge for StallingAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.world
            .stalls
            .at(CrashPoint::AfterPublish, order_of(&self.delivery.message))
            .await;
        self.delivery.ack().await
    }

    async fn nack(self: Box<Self>) -> Result<(), TransportError> {
        self.delivery.nack().await
    }

    async fn dead_letter(
        self: Box<Self>,
        _message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.delivery.dead_letter(reason).await
    }
}

/// The `order_id` in an event's data, if any.
fn order_id(data: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()?
        .get("order_id")?
        .as_u64()
}

fn order_of(message: &RawMessage) -> Option<u64> {
    Envelope::decode(message)
        .ok()
        .and_then(|envelope| order_id(envelope.data.get()))
}

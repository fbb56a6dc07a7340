//! A transport whose deliveries arrive twice, late, out of order or not at all, whose
//! acknowledgements get lost and whose publishes fail.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use choreo_core::transport::{publish_through_shared, Acknowledge};
use choreo_core::{
    Delivery, Envelope, PublishError, RawMessage, Subscription, Transport, TransportError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Faults;

/// `inner` with the transport faults of a [`Faults`]; made by [`Faults::transport`].
///
/// Subscriptions meet the delivery faults and publishes the publish faults. Observers
/// ([`Transport::observe`], a saga log) and dead letters go to `inner` untouched: they are
/// how a test sees what really happened.
pub struct FaultyTransport {
    inner: Arc<dyn Transport>,
    faults: Arc<Faults>,
}

impl FaultyTransport {
    /// `inner` with `faults`.
    pub fn new(inner: Arc<dyn Transport>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }

    fn faulty(&self, inner: Box<dyn Subscription>) -> Box<dyn Subscription> {
        Box::new(FaultySubscription::new(
            inner,
            Arc::clone(&self.inner),
            Arc::clone(&self.faults),
        ))
    }
}

#[async_trait]
impl Transport for FaultyTransport {
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
        if self.faults.transport_down() || self.faults.hit(self.faults.rates.fail_publish) {
            self.faults
                .counters
                .failed_publishes
                .fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Connection(
                "publish failed (injected fault)".to_owned(),
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

    async fn observe(
        &self,
        name: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, TransportError> {
        self.inner.observe(name, topics).await
    }

    fn span_attributes(&self, topic: &str, envelope: &Envelope) -> Vec<opentelemetry::KeyValue> {
        self.inner.span_attributes(topic, envelope)
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

/// Deliveries from a task that reads the real subscription, so that held-back ones come
/// out on time whether or not anything else arrives.
struct FaultySubscription {
    received: mpsc::Receiver<Result<Delivery, TransportError>>,
    reader: JoinHandle<()>,
    /// Held-back deliveries and duplicates, with when each comes out.
    held: VecDeque<(Instant, Delivery)>,
    transport: Arc<dyn Transport>,
    faults: Arc<Faults>,
}

impl FaultySubscription {
    fn new(
        mut inner: Box<dyn Subscription>,
        transport: Arc<dyn Transport>,
        faults: Arc<Faults>,
    ) -> Self {
        let (sender, received) = mpsc::channel(1);
        let reader = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = sender.closed() => return,
                    next = inner.next() => next,
                };
                let closed = matches!(next, Err(TransportError::Closed));
                if sender.send(next).await.is_err() || closed {
                    return;
                }
            }
        });
        Self {
            received,
            reader,
            held: VecDeque::new(),
            transport,
            faults,
        }
    }

    fn hold(&mut self, delivery: Delivery) {
        let until = Instant::now() + self.faults.up_to(self.faults.rates.max_delay);
        let at = self.held.partition_point(|(other, _)| *other <= until);
        self.held.insert(at, (until, delivery));
    }

    /// A copy of `delivery` that the broker would deliver again: settling it touches
    /// nothing, but a dead letter of it still goes out.
    fn copy(&self, delivery: &Delivery) -> Delivery {
        Delivery::new(
            delivery.topic.clone(),
            Arc::clone(&delivery.message),
            true,
            Box::new(CopyAck {
                topic: delivery.topic.clone(),
                transport: Arc::clone(&self.transport),
            }),
        )
    }

    /// `delivery` with its acknowledgement lost for a `lose_ack` rate of them.
    fn with_lossy_ack(&self, delivery: Delivery) -> Delivery {
        let (topic, message, redelivered) = (
            delivery.topic.clone(),
            Arc::clone(&delivery.message),
            delivery.redelivered,
        );
        Delivery::new(
            topic,
            message,
            redelivered,
            Box::new(LossyAck {
                delivery,
                faults: Arc::clone(&self.faults),
            }),
        )
    }
}

impl Drop for FaultySubscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        loop {
            let due = self.held.front().map(|(until, _)| *until);
            if due.is_some_and(|due| due <= Instant::now()) {
                if let Some((_, delivery)) = self.held.pop_front() {
                    return Ok(delivery);
                }
            }
            let received = tokio::select! {
                received = self.received.recv() => received,
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => continue,
            };
            let delivery = match received {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(error),
                None => return Err(TransportError::Closed),
            };
            let faults = Arc::clone(&self.faults);
            let rates = &faults.rates;
            if faults.hit(rates.drop_unacked) {
                faults.counters.dropped.fetch_add(1, Ordering::Relaxed);
                drop(delivery);
                continue;
            }
            if faults.hit(rates.duplicate) {
                faults.counters.duplicated.fetch_add(1, Ordering::Relaxed);
                let copy = self.copy(&delivery);
                self.hold(copy);
            }
            let delivery = self.with_lossy_ack(delivery);
            if faults.hit(rates.delay) {
                faults.counters.delayed.fetch_add(1, Ordering::Relaxed);
                self.hold(delivery);
                continue;
            }
            return Ok(delivery);
        }
    }
}

/// Settles a duplicate: the broker's copy was settled already.
struct CopyAck {
    topic: String,
    transport: Arc<dyn Transport>,
}

#[async_trait]
impl Acknowledge for CopyAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        Ok(())
    }

    async fn nack(self: Box<Self>) -> Result<(), TransportError> {
        Ok(())
    }

    async fn dead_letter(
        self: Box<Self>,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.transport
            .dead_letter(&self.topic, message, reason)
            .await
    }
}

/// Acknowledges through the real delivery, or returns it for redelivery instead, as if the
/// acknowledgement never reached the broker.
struct LossyAck {
    delivery: Delivery,
    faults: Arc<Faults>,
}

#[async_trait]
impl Acknowledge for LossyAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        if self.faults.hit(self.faults.rates.lose_ack) {
            self.faults
                .counters
                .lost_acks
                .fetch_add(1, Ordering::Relaxed);
            return self.delivery.nack().await;
        }
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

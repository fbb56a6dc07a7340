//! The order saga used by the saga scenario tests: orders, payments and inventory, with
//! business behaviour each test can bend, and a ledger of every effect they had.
//!
//! Flow (DESIGN §4): orders starts with `OrderPlaced` -> payments reserves credit
//! (`CreditReserved`) -> inventory reserves stock (`StockReserved`) -> payments captures the
//! payment (`PaymentCaptured`) -> orders confirms (`OrderConfirmed`, terminal).
#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::memory::MemoryTransport;
use choreo::{
    AbortReason, Clock, Context, Deadline, Envelope, Event, EventId, HandlerError, Inbox,
    MemoryInbox, MemoryJournal, RetryPolicy, RunningService, Saga, SagaAborted, SagaCompensated,
    SagaId, SagaKind, SagaLog, SagaOutcome, SagaRecord, Service, ServiceOptions, Step, StepHandler,
    StepResult, TokioClock, TraceContext, Transport,
};
use opentelemetry::metrics::Meter;
use serde::{Deserialize, Serialize};

pub const TOPIC: &str = "orders.saga";
pub const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];

/// Where a scenario runs. On memory, time is paused tokio time and a unit is one second; on a
/// broker, time is real and units are short, so deadlines stay small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    #[cfg(feature = "kafka")]
    Kafka,
    #[cfg(feature = "rabbitmq")]
    RabbitMq,
}

impl Backend {
    /// `n` units of scenario time.
    pub fn units(self, n: u64) -> Duration {
        match self {
            Backend::Memory => Duration::from_secs(n),
            #[cfg(feature = "kafka")]
            Backend::Kafka => Duration::from_millis(300 * n),
            #[cfg(feature = "rabbitmq")]
            Backend::RabbitMq => Duration::from_millis(300 * n),
        }
    }

    /// The saga's timeout: 10 units.
    pub fn timeout(self) -> Duration {
        self.units(10)
    }
}

/// Expands each named `async fn(Backend)` scenario into one test per transport: paused time
/// on memory, real time against a broker started through the test kit.
#[macro_export]
macro_rules! on_every_transport {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name($crate::common::Backend::Memory).await
                }
            )*
        }
        #[cfg(feature = "kafka")]
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Kafka).await
                }
            )*
        }
        #[cfg(feature = "rabbitmq")]
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::RabbitMq).await
                }
            )*
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
    pub amount_cents: u64,
    pub sku: String,
}
impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.OrderPlaced.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditReserved {
    pub order_id: u64,
    pub amount_cents: u64,
    pub sku: String,
}
impl Event for CreditReserved {
    const TYPE: &'static str = "payments.CreditReserved.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockReserved {
    pub order_id: u64,
    pub sku: String,
}
impl Event for StockReserved {
    const TYPE: &'static str = "inventory.StockReserved.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: u64,
}
impl Event for PaymentCaptured {
    const TYPE: &'static str = "payments.PaymentCaptured.v1";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: u64,
}
impl Event for OrderConfirmed {
    const TYPE: &'static str = "orders.OrderConfirmed.v1";
}

pub fn saga(timeout: Duration) -> Saga {
    Saga::new(TOPIC)
        .timeout(timeout)
        .completes_on::<OrderConfirmed>()
}

/// How the services behave; tests change it before starting sagas.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub credit_limit_cents: u64,
    pub out_of_stock: HashSet<String>,
    /// How long inventory takes to reserve a SKU.
    pub slow_skus: HashMap<String, Duration>,
    /// How long payments takes to reserve credit.
    pub credit_delay: Duration,
    /// How often inventory fails transiently before it succeeds.
    pub inventory_transient_failures: u32,
    /// Whether inventory fails permanently.
    pub inventory_permanent_failure: bool,
    /// Whether inventory panics.
    pub inventory_panics: bool,
    /// How often releasing credit fails transiently before it succeeds.
    pub refund_failures: u32,
    /// Orders refuses to confirm (the customer cancelled meanwhile).
    pub reject_confirmation: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            credit_limit_cents: 10_000,
            out_of_stock: HashSet::new(),
            slow_skus: HashMap::new(),
            credit_delay: Duration::ZERO,
            inventory_transient_failures: 0,
            inventory_permanent_failure: false,
            inventory_panics: false,
            refund_failures: 0,
            reject_confirmation: false,
        }
    }
}

/// One effect a service had on its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub service: &'static str,
    pub action: &'static str,
    pub order_id: u64,
}

pub fn effect(service: &'static str, action: &'static str, order_id: u64) -> Effect {
    Effect {
        service,
        action,
        order_id,
    }
}

/// The effects of a completed order saga, in order: every forward step once.
pub fn every_forward_step_once(order_id: u64) -> Vec<Effect> {
    vec![
        effect("orders", "create_order", order_id),
        effect("payments", "reserve_credit", order_id),
        effect("inventory", "reserve_stock", order_id),
        effect("payments", "capture_payment", order_id),
        effect("orders", "confirm_order", order_id),
    ]
}

/// The business side of the three services: their behaviour and a ledger of effects.
#[derive(Default)]
pub struct World {
    pub behaviour: Mutex<Behaviour>,
    ledger: Mutex<Vec<Effect>>,
    attempts: Mutex<HashMap<(&'static str, u64), u32>>,
}

impl World {
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().unwrap().clone()
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    fn record(&self, service: &'static str, action: &'static str, order_id: u64) {
        self.ledger
            .lock()
            .unwrap()
            .push(effect(service, action, order_id));
    }

    /// Counts an attempt of `action` for `order_id` and returns its number, from 1.
    fn attempt(&self, action: &'static str, order_id: u64) -> u32 {
        let mut attempts = self.attempts.lock().unwrap();
        let count = attempts.entry((action, order_id)).or_default();
        *count += 1;
        *count
    }

    pub fn attempts(&self, action: &'static str, order_id: u64) -> u32 {
        self.attempts
            .lock()
            .unwrap()
            .get(&(action, order_id))
            .copied()
            .unwrap_or(0)
    }

    /// Every effect on `order_id`, in the order they happened.
    pub fn effects(&self, order_id: u64) -> Vec<Effect> {
        self.ledger
            .lock()
            .unwrap()
            .iter()
            .filter(|effect| effect.order_id == order_id)
            .cloned()
            .collect()
    }

    pub fn all_effects(&self) -> Vec<Effect> {
        self.ledger.lock().unwrap().clone()
    }
}

/// Payments as a stateful handler, to exercise the `StepHandler` trait as users write it.
#[derive(Clone)]
struct Payments(Arc<World>);

impl StepHandler<OrderPlaced> for Payments {
    type Output = CreditReserved;

    async fn handle(&self, order: OrderPlaced, _cx: Context) -> StepResult<CreditReserved> {
        let delay = self.0.behaviour().credit_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if order.amount_cents > self.0.behaviour().credit_limit_cents {
            return Ok(Step::reject(format!(
                "{} cents exceed the credit limit",
                order.amount_cents
            )));
        }
        self.0.record("payments", "reserve_credit", order.order_id);
        tracing::info!(order_id = order.order_id, "credit reserved");
        Ok(Step::done(CreditReserved {
            order_id: order.order_id,
            amount_cents: order.amount_cents,
            sku: order.sku,
        }))
    }
}

impl StepHandler<StockReserved> for Payments {
    type Output = PaymentCaptured;

    async fn handle(&self, stock: StockReserved, _cx: Context) -> StepResult<PaymentCaptured> {
        self.0.record("payments", "capture_payment", stock.order_id);
        Ok(Step::done(PaymentCaptured {
            order_id: stock.order_id,
        }))
    }
}

/// The services of one test, on one transport, sharing one paused-time clock.
pub struct Harness {
    pub backend: Backend,
    pub transport: Arc<dyn Transport>,
    pub memory: Option<MemoryTransport>,
    dead_letters: DeadLetterLog,
    pub clock: TokioClock,
    pub world: Arc<World>,
    pub log: SagaLog,
    pub journals: HashMap<&'static str, Arc<MemoryJournal>>,
    pub inboxes: HashMap<&'static str, Arc<dyn Inbox>>,
    pub running: HashMap<&'static str, RunningService>,
    /// Where the services record metrics; default: the global meter provider.
    pub meter: Option<Meter>,
    next_order: Mutex<u64>,
    /// Declared last, so the broker outlives every client dropped with the harness.
    #[cfg(feature = "kafka")]
    kafka: Option<choreo_testkit::KafkaBroker>,
    #[cfg(feature = "rabbitmq")]
    rabbitmq: Option<choreo_testkit::RabbitMqBroker>,
}

pub fn test_options(backend: Backend) -> ServiceOptions {
    ServiceOptions::default()
        .step_retry(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(100)),
        )
        .compensation_retry(
            RetryPolicy::default()
                .max_attempts(4)
                .initial_backoff(Duration::from_millis(100)),
        )
        .deadline_grace(backend.units(1))
        .redelivery_delay(Duration::from_millis(50))
}

impl Harness {
    /// All three services on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_metered(backend, None).await
    }

    /// All three services on `backend`, recording their metrics with `meter`.
    pub async fn start_metered(backend: Backend, meter: Option<Meter>) -> Self {
        let mut harness = match backend {
            Backend::Memory => Self::memory(MemoryTransport::new()).await,
            #[cfg(feature = "kafka")]
            Backend::Kafka => Self::kafka().await,
            #[cfg(feature = "rabbitmq")]
            Backend::RabbitMq => Self::rabbitmq().await,
        };
        harness.meter = meter;
        harness.start_all().await;
        harness
    }

    /// A RabbitMQ broker started through the test kit; no service started yet.
    #[cfg(feature = "rabbitmq")]
    async fn rabbitmq() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let broker = choreo_testkit::RabbitMqBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let url = format!("{}?reconnect.max.ms=1000", broker.url());
        let transport = choreo::connect(&url).await.unwrap();
        let mut harness = Self::on(Backend::RabbitMq, transport).await;
        harness.rabbitmq = Some(broker);
        harness
    }

    /// All three services on `memory`.
    pub async fn memory_with(memory: MemoryTransport) -> Self {
        let mut harness = Self::memory(memory).await;
        harness.start_all().await;
        harness
    }

    /// No service started yet, on `memory`.
    async fn memory(memory: MemoryTransport) -> Self {
        let mut harness = Self::on(Backend::Memory, Arc::new(memory.clone())).await;
        harness.memory = Some(memory);
        harness
    }

    /// A Kafka broker started through the test kit; no service started yet.
    #[cfg(feature = "kafka")]
    async fn kafka() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let broker = choreo_testkit::KafkaBroker::start()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let url = format!(
            "{}?session.timeout.ms=2000&commit.interval.ms=100&message.timeout.ms=10000&rdkafka.fetch.wait.max.ms=20",
            broker.url()
        );
        let transport = choreo::connect(&url).await.unwrap();
        let mut harness = Self::on(Backend::Kafka, transport).await;
        harness.kafka = Some(broker);
        harness
    }

    /// No service started yet, on `transport`.
    pub async fn on(backend: Backend, transport: Arc<dyn Transport>) -> Self {
        let definition = saga(backend.timeout());
        let (log, dead_letters) = tokio::join!(
            SagaLog::start(Arc::clone(&transport), &definition, "observer"),
            DeadLetterLog::start(Arc::clone(&transport), TOPIC),
        );
        let journals = SERVICES
            .iter()
            .map(|name| (*name, Arc::new(MemoryJournal::new())))
            .collect();
        let inboxes = SERVICES
            .iter()
            .map(|name| (*name, Arc::new(MemoryInbox::new()) as Arc<dyn Inbox>))
            .collect();
        Self {
            backend,
            transport,
            memory: None,
            #[cfg(feature = "kafka")]
            kafka: None,
            #[cfg(feature = "rabbitmq")]
            rabbitmq: None,
            dead_letters,
            clock: TokioClock::new(),
            world: Arc::new(World::default()),
            log: log.unwrap(),
            journals,
            inboxes,
            running: HashMap::new(),
            meter: None,
            next_order: Mutex::new(0),
        }
    }

    /// `n` units of scenario time on this backend.
    pub fn units(&self, n: u64) -> Duration {
        self.backend.units(n)
    }

    /// The options every service of the harness runs with.
    pub fn options(&self) -> ServiceOptions {
        test_options(self.backend)
    }

    /// Publishes bytes that need not be an event.
    pub async fn publish_raw(&self, topic: &str, key: Option<&str>, message: choreo::RawMessage) {
        if let Some(memory) = &self.memory {
            memory.publish_raw(topic, key, message).unwrap();
            return;
        }
        #[cfg(feature = "kafka")]
        if let Some(broker) = &self.kafka {
            let url = choreo::TransportUrl::parse(broker.url()).unwrap();
            let kafka = choreo::kafka::KafkaTransport::connect(&url).await.unwrap();
            return kafka.publish_raw(topic, key, &message).await.unwrap();
        }
        #[cfg(feature = "rabbitmq")]
        if let Some(broker) = &self.rabbitmq {
            let url = choreo::TransportUrl::parse(broker.url()).unwrap();
            let rabbitmq = choreo::rabbitmq::RabbitMqTransport::connect(&url)
                .await
                .unwrap();
            return rabbitmq.publish_raw(topic, &message).await.unwrap();
        }
        unreachable!("a harness has a transport");
    }

    /// Messages of `topic` that `group` has not acked, where the transport can tell.
    pub fn pending(&self, topic: &str, group: &str) -> Option<usize> {
        self.memory
            .as_ref()
            .map(|memory| memory.pending(topic, group))
    }

    /// Waits until at least `count` dead letters of the saga topic arrived, then returns all.
    pub async fn dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        let wait = self.dead_letters.wait_for(count);
        if tokio::time::timeout(self.units(60), wait).await.is_err() {
            panic!(
                "expected {count} dead letters, got {:?}",
                self.dead_letters.all()
            );
        }
        self.dead_letters.all()
    }

    pub fn memory_transport(&self) -> &MemoryTransport {
        self.memory.as_ref().unwrap()
    }

    /// Starts the three services at once (joining a broker's consumer groups takes a while).
    pub async fn start_all(&mut self) {
        let started = futures_util::future::join_all(SERVICES.map(|name| {
            let service = self.service(name, self.options());
            let transport = Arc::clone(&self.transport);
            async move { (name, service.run(transport).await.unwrap()) }
        }))
        .await;
        self.running.extend(started);
    }

    /// Starts (or restarts) service `name` with its journal and inbox kept across restarts.
    pub async fn start_service(&mut self, name: &'static str) {
        self.start_with(name, self.options()).await;
    }

    /// Starts (or restarts) service `name` with `options`.
    pub async fn start_with(&mut self, name: &'static str, options: ServiceOptions) {
        let service = self.service(name, options);
        let running = service.run(Arc::clone(&self.transport)).await.unwrap();
        self.running.insert(name, running);
    }

    pub fn service(&self, name: &'static str, options: ServiceOptions) -> Service {
        let builder = Service::builder(name, &saga(self.backend.timeout()))
            .journal(self.journals[name].clone())
            .inbox(self.inboxes[name].clone())
            .clock(Arc::new(self.clock.clone()))
            .options(options);
        let builder = match &self.meter {
            Some(meter) => builder.meter(meter.clone()),
            None => builder,
        };
        let world = Arc::clone(&self.world);
        match name {
            "orders" => {
                let cancel_world = Arc::clone(&world);
                builder
                    .initiates::<OrderPlaced>()
                    .compensate(move |order: OrderPlaced, _cx: Context| {
                        let world = Arc::clone(&cancel_world);
                        async move {
                            world.record("orders", "cancel_order", order.order_id);
                            Ok::<_, HandlerError>(())
                        }
                    })
                    .step(move |paid: PaymentCaptured, _cx: Context| {
                        let world = Arc::clone(&world);
                        async move {
                            if world.behaviour().reject_confirmation {
                                return Ok(Step::reject("the customer cancelled the order"));
                            }
                            world.record("orders", "confirm_order", paid.order_id);
                            Ok(Step::done(OrderConfirmed {
                                order_id: paid.order_id,
                            }))
                        }
                    })
                    .build()
            }
            "payments" => {
                let refund_world = Arc::clone(&world);
                let capture_world = Arc::clone(&world);
                builder
                    .step::<OrderPlaced, _>(Payments(Arc::clone(&world)))
                    .compensate(move |credit: CreditReserved, _cx: Context| {
                        let world = Arc::clone(&refund_world);
                        async move {
                            let attempt = world.attempt("release_credit", credit.order_id);
                            if attempt <= world.behaviour().refund_failures {
                                return Err(HandlerError::transient("ledger unavailable"));
                            }
                            world.record("payments", "release_credit", credit.order_id);
                            Ok(())
                        }
                    })
                    .step::<StockReserved, _>(Payments(world))
                    .compensate(move |captured: PaymentCaptured, _cx: Context| {
                        let world = Arc::clone(&capture_world);
                        async move {
                            world.record("payments", "refund_payment", captured.order_id);
                            Ok(())
                        }
                    })
                    .build()
            }
            "inventory" => {
                let release_world = Arc::clone(&world);
                builder
                    .step(move |credit: CreditReserved, _cx: Context| {
                        let world = Arc::clone(&world);
                        async move { reserve_stock(&world, credit).await }
                    })
                    .compensate(move |stock: StockReserved, _cx: Context| {
                        let world = Arc::clone(&release_world);
                        async move {
                            world.record("inventory", "release_stock", stock.order_id);
                            Ok(())
                        }
                    })
                    .build()
            }
            other => panic!("no service {other}"),
        }
        .unwrap()
    }

    /// Places an order: orders starts a saga. Returns the order id and the saga id.
    pub async fn place_order(&self, amount_cents: u64, sku: &str) -> (u64, SagaId) {
        self.order(amount_cents, sku, None).await
    }

    /// Places an order whose saga has `timeout` instead of the saga's default.
    pub async fn place_order_within(
        &self,
        amount_cents: u64,
        sku: &str,
        timeout: Duration,
    ) -> (u64, SagaId) {
        self.order(amount_cents, sku, Some(timeout)).await
    }

    async fn order(
        &self,
        amount_cents: u64,
        sku: &str,
        timeout: Option<Duration>,
    ) -> (u64, SagaId) {
        let order_id = {
            let mut next = self.next_order.lock().unwrap();
            *next += 1;
            *next
        };
        self.world.record("orders", "create_order", order_id);
        let order = OrderPlaced {
            order_id,
            amount_cents,
            sku: sku.to_owned(),
        };
        let orders = &self.running["orders"];
        let saga = match timeout {
            None => orders.start_saga(order).await,
            Some(timeout) => {
                orders
                    .start_saga_until(order, Deadline::after(self.clock.now(), timeout))
                    .await
            }
        }
        .unwrap();
        (order_id, saga)
    }

    /// Waits (on paused time: instantly) for the saga to end, acknowledged by `participants`.
    pub async fn outcome_among(&self, saga: SagaId, participants: &[&str]) -> SagaOutcome {
        match tokio::time::timeout(
            self.units(200),
            self.log.wait_for_outcome(saga, participants),
        )
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => panic!(
                "saga {saga} did not end; its events so far:\n{}",
                self.log.timeline(saga)
            ),
        }
    }

    pub async fn outcome(&self, saga: SagaId) -> SagaOutcome {
        self.outcome_among(saga, &SERVICES).await
    }

    /// Waits (polling, on either kind of time) until `condition` holds.
    pub async fn wait_until(&self, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + self.units(100);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lets every deadline, grace period and retry that can still fire run out.
    pub async fn settle(&self) {
        tokio::time::sleep(match self.backend {
            Backend::Memory => self.units(120),
            #[cfg(any(feature = "kafka", feature = "rabbitmq"))]
            _ => self.units(14),
        })
        .await;
    }

    pub fn record(&self, service: &'static str, saga: SagaId) -> Option<SagaRecord> {
        self.journals[service].record(saga)
    }

    /// `(source, type)` of every event of the saga, in order.
    pub fn flow(&self, saga: SagaId) -> Vec<(String, String)> {
        self.log.flow(saga)
    }
}

async fn reserve_stock(world: &World, credit: CreditReserved) -> StepResult<StockReserved> {
    let behaviour = world.behaviour();
    let attempt = world.attempt("reserve_stock", credit.order_id);
    if behaviour.inventory_panics {
        panic!("inventory bug");
    }
    if behaviour.inventory_permanent_failure {
        return Err(HandlerError::permanent("SKU catalogue is corrupt"));
    }
    if attempt <= behaviour.inventory_transient_failures {
        return Err(HandlerError::transient("warehouse system timed out"));
    }
    if let Some(delay) = behaviour.slow_skus.get(&credit.sku) {
        tokio::time::sleep(*delay).await;
    }
    if behaviour.out_of_stock.contains(&credit.sku) {
        return Ok(Step::reject(format!("{} is out of stock", credit.sku)));
    }
    world.record("inventory", "reserve_stock", credit.order_id);
    Ok(Step::done(StockReserved {
        order_id: credit.order_id,
        sku: credit.sku,
    }))
}

/// Shorthand for an expected `(source, type)` pair.
pub fn ev(source: &str, event_type: &str) -> (String, String) {
    (source.to_owned(), event_type.to_owned())
}

pub const ABORTED: &str = "choreo.SagaAborted.v1";
pub const COMPENSATED: &str = "choreo.SagaCompensated.v1";

pub fn step_types(record: &SagaRecord) -> Vec<&str> {
    record
        .steps
        .iter()
        .map(|step| step.output.event_type.as_str())
        .collect()
}

pub fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

pub fn sorted_effects(mut effects: Vec<Effect>) -> Vec<Effect> {
    effects.sort_by_key(|e| (e.service, e.action, e.order_id));
    effects
}

pub fn data<T: serde::de::DeserializeOwned>(event: &Envelope) -> T {
    serde_json::from_str(event.data.get()).unwrap()
}

/// Each participant's compensation acknowledgement of the saga, by service.
pub fn acknowledgements(h: &Harness, saga: SagaId) -> HashMap<String, SagaCompensated> {
    let mut acks = HashMap::new();
    for event in h.log.events(saga) {
        if event.kind == SagaKind::Compensated {
            let ack: SagaCompensated = data(&event);
            let previous = acks.insert(ack.service.clone(), ack);
            assert!(previous.is_none(), "a service acknowledged twice");
        }
    }
    acks
}

impl Harness {
    /// An event of `saga` as `source` would publish it, for injecting out-of-order,
    /// duplicate or late events.
    pub fn event<E: Event>(
        &self,
        source: &str,
        saga: SagaId,
        deadline: Deadline,
        kind: SagaKind,
        event: &E,
    ) -> Envelope {
        Envelope {
            id: EventId::new(),
            source: source.to_owned(),
            event_type: E::TYPE.to_owned(),
            time: self.clock.now(),
            saga_id: saga,
            causation_id: None,
            deadline,
            kind,
            trace: TraceContext::new_root(),
            data: serde_json::value::to_raw_value(event).unwrap(),
        }
    }

    pub fn abort_event(&self, saga: SagaId, deadline: Deadline, reason: AbortReason) -> Envelope {
        self.event(
            "tester",
            saga,
            deadline,
            SagaKind::Abort,
            &SagaAborted {
                reason,
                detail: "injected by the test".into(),
                service: "tester".into(),
            },
        )
    }

    pub async fn publish(&self, envelope: Envelope) {
        self.transport.publish(TOPIC, envelope).await.unwrap();
    }

    pub fn deadline_in(&self, timeout: Duration) -> Deadline {
        Deadline::after(self.clock.now(), timeout)
    }
}

/// A dead letter as seen on the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
    pub body: Vec<u8>,
    pub message: choreo::RawMessage,
}

/// Records what arrives on `<topic>.dlq`, as an operator's consumer would.
#[derive(Clone)]
pub struct DeadLetterLog {
    letters: Arc<Mutex<Vec<DeadLetter>>>,
    changed: Arc<tokio::sync::Notify>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DeadLetterLog {
    async fn start(transport: Arc<dyn Transport>, topic: &str) -> Self {
        let mut subscription = transport
            .subscribe(
                "dead-letter-observer",
                &[choreo::transport::dead_letter_topic(topic)],
            )
            .await
            .unwrap();
        let letters = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (recorded, notify) = (Arc::clone(&letters), Arc::clone(&changed));
        let task = tokio::spawn(async move {
            while let Ok(delivery) = subscription.next().await {
                let reason = delivery
                    .message
                    .header(choreo::transport::DEAD_LETTER_REASON_HEADER)
                    .map(|reason| String::from_utf8_lossy(reason).into_owned())
                    .unwrap_or_default();
                let mut message = (*delivery.message).clone();
                message
                    .headers
                    .retain(|(key, _)| !key.starts_with("choreo-dead-letter-"));
                recorded.lock().unwrap().push(DeadLetter {
                    reason,
                    body: message.body.clone(),
                    message,
                });
                notify.notify_waiters();
                let _ = delivery.ack().await;
            }
        });
        Self {
            letters,
            changed,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    fn all(&self) -> Vec<DeadLetter> {
        self.letters.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) {
        loop {
            let changed = self.changed.notified();
            if self.letters.lock().unwrap().len() >= count {
                return;
            }
            changed.await;
        }
    }
}

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
use serde::{Deserialize, Serialize};

pub const TOPIC: &str = "orders.saga";
pub const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];
pub const TIMEOUT: Duration = Duration::from_secs(10);

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

pub fn saga() -> Saga {
    Saga::new(TOPIC)
        .timeout(TIMEOUT)
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
    pub transport: Arc<dyn Transport>,
    pub memory: Option<MemoryTransport>,
    pub clock: TokioClock,
    pub world: Arc<World>,
    pub log: SagaLog,
    pub journals: HashMap<&'static str, Arc<MemoryJournal>>,
    pub inboxes: HashMap<&'static str, Arc<dyn Inbox>>,
    pub running: HashMap<&'static str, RunningService>,
    next_order: Mutex<u64>,
}

pub fn test_options() -> ServiceOptions {
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
        .deadline_grace(Duration::from_secs(1))
        .redelivery_delay(Duration::from_millis(50))
}

impl Harness {
    /// All three services on a fresh in-memory transport.
    pub async fn memory() -> Self {
        Self::memory_with(MemoryTransport::new()).await
    }

    /// All three services on `memory`.
    pub async fn memory_with(memory: MemoryTransport) -> Self {
        let mut harness = Self::on(Arc::new(memory.clone())).await;
        harness.memory = Some(memory);
        harness.start_all().await;
        harness
    }

    /// No service started yet, on `transport`.
    pub async fn on(transport: Arc<dyn Transport>) -> Self {
        let log = SagaLog::start(Arc::clone(&transport), &saga(), "observer")
            .await
            .unwrap();
        let journals = SERVICES
            .iter()
            .map(|name| (*name, Arc::new(MemoryJournal::new())))
            .collect();
        let inboxes = SERVICES
            .iter()
            .map(|name| (*name, Arc::new(MemoryInbox::new()) as Arc<dyn Inbox>))
            .collect();
        Self {
            transport,
            memory: None,
            clock: TokioClock::new(),
            world: Arc::new(World::default()),
            log,
            journals,
            inboxes,
            running: HashMap::new(),
            next_order: Mutex::new(0),
        }
    }

    pub fn memory_transport(&self) -> &MemoryTransport {
        self.memory.as_ref().unwrap()
    }

    pub async fn start_all(&mut self) {
        for name in SERVICES {
            self.start(name).await;
        }
    }

    /// Starts (or restarts) service `name` with its journal and inbox kept across restarts.
    pub async fn start(&mut self, name: &'static str) {
        self.start_with(name, test_options()).await;
    }

    /// Starts (or restarts) service `name` with `options`.
    pub async fn start_with(&mut self, name: &'static str, options: ServiceOptions) {
        let service = self.service(name, options);
        let running = service.run(Arc::clone(&self.transport)).await.unwrap();
        self.running.insert(name, running);
    }

    pub fn service(&self, name: &'static str, options: ServiceOptions) -> Service {
        let builder = Service::builder(name, &saga())
            .journal(self.journals[name].clone())
            .inbox(self.inboxes[name].clone())
            .clock(Arc::new(self.clock.clone()))
            .options(options);
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
        let order_id = {
            let mut next = self.next_order.lock().unwrap();
            *next += 1;
            *next
        };
        self.world.record("orders", "create_order", order_id);
        let saga = self.running["orders"]
            .start_saga(OrderPlaced {
                order_id,
                amount_cents,
                sku: sku.to_owned(),
            })
            .await
            .unwrap();
        (order_id, saga)
    }

    /// Waits (on paused time: instantly) for the saga to end, acknowledged by `participants`.
    pub async fn outcome_among(&self, saga: SagaId, participants: &[&str]) -> SagaOutcome {
        match tokio::time::timeout(
            Duration::from_secs(600),
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

    /// Lets every timer and retry that is due run, on paused time.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs(120)).await;
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

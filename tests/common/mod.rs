//! The order saga used by the saga scenario tests: orders, payments and inventory, with
//! business behaviour each test can bend, and a ledger of every effect they had.
//!
//! Flow (docs/concepts.md): orders starts with `OrderPlaced` -> payments reserves credit
//! (`CreditReserved`) -> inventory reserves stock (`StockReserved`) -> payments captures the
//! payment (`PaymentCaptured`) -> orders confirms (`OrderConfirmed`, terminal).
//!
//! Each scenario runs on a transport (memory, Kafka, RabbitMQ) and a store (memory, SQLite,
//! PostgreSQL). On a SQL store every effect is a row written in the handling's transaction
//! and every service reopens its store when it restarts, so a test shows what survives.
#![allow(dead_code, unreachable_pub)]

pub mod console;
pub mod faults;
pub mod logs;
pub mod world;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::memory::MemoryTransport;
use choreo::{
    AbortReason, Clock, Context, Deadline, Emit, Envelope, Event, EventId, HandlerError,
    MemoryStore, RetryPolicy, RunningService, Saga, SagaAborted, SagaCompensated, SagaId, SagaKind,
    SagaLog, SagaOutcome, SagaRecord, SagaStart, Service, ServiceOptions, Step, StepHandler,
    StepResult, Store, TokioClock, TraceContext, Transport,
};
use opentelemetry::metrics::Meter;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde::{Deserialize, Serialize};

#[allow(unused_imports)]
pub use self::world::{effect, Behaviour, CrashPoint, Effect, Ledger, World};

pub const TOPIC: &str = "orders.saga";
pub const SERVICES: [&str; 3] = ["orders", "payments", "inventory"];

/// The broker a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Memory,
    #[cfg(feature = "kafka")]
    Kafka,
    #[cfg(feature = "rabbitmq")]
    RabbitMq,
}

/// Where a scenario's services keep their saga state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

/// Where a scenario runs: a transport and a store. On memory, time is paused tokio time and
/// a unit is one second (the SQLite store works on tokio's blocking pool, which holds a
/// paused clock still); with a broker or PostgreSQL, time is real and units are short, so
/// deadlines stay small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub via: Via,
    pub store: StoreKind,
}

impl Backend {
    pub const MEMORY: Self = Self {
        via: Via::Memory,
        store: StoreKind::Memory,
    };
    #[cfg(feature = "kafka")]
    pub const KAFKA: Self = Self {
        via: Via::Kafka,
        store: StoreKind::Memory,
    };
    #[cfg(feature = "rabbitmq")]
    pub const RABBITMQ: Self = Self {
        via: Via::RabbitMq,
        store: StoreKind::Memory,
    };

    /// The same transport with `store`.
    pub const fn on(self, store: StoreKind) -> Self {
        Self { store, ..self }
    }

    /// Whether the scenario runs on paused time.
    pub fn paused(self) -> bool {
        #[cfg(feature = "postgres")]
        if self.store == StoreKind::Postgres {
            return false;
        }
        self.via == Via::Memory
    }

    /// `n` units of scenario time.
    pub fn units(self, n: u64) -> Duration {
        if self.paused() {
            Duration::from_secs(n)
        } else {
            Duration::from_millis(300 * n)
        }
    }

    /// The saga's timeout: 10 units.
    pub fn timeout(self) -> Duration {
        self.units(10)
    }
}

/// Expands named `async fn(Backend)` scenarios into one test per backend, in a module named
/// after it: `memory`, `memory_sqlite`, `memory_postgres` (the stores on the in-memory
/// transport), `kafka`, `rabbitmq` (the brokers with the memory store), `kafka_sqlite`,
/// `rabbitmq_sqlite`, `kafka_postgres`, `rabbitmq_postgres`. Backends whose cargo features
/// are off expand to nothing.
#[macro_export]
macro_rules! scenarios {
    ($($backend:ident: [$($name:ident),* $(,)?];)*) => {
        $( $crate::scenarios!(@on $backend; $($name),*); )*
    };
    (@on memory; $($name:ident),*) => {
        $crate::scenarios!(@paused memory, $crate::common::Backend::MEMORY, all(); $($name),*);
    };
    (@on memory_sqlite; $($name:ident),*) => {
        $crate::scenarios!(@paused memory_sqlite,
            $crate::common::Backend::MEMORY.on($crate::common::StoreKind::Sqlite),
            all(feature = "sqlite"); $($name),*);
    };
    (@on memory_postgres; $($name:ident),*) => {
        $crate::scenarios!(@real memory_postgres,
            $crate::common::Backend::MEMORY.on($crate::common::StoreKind::Postgres),
            all(feature = "postgres"); $($name),*);
    };
    (@on kafka; $($name:ident),*) => {
        $crate::scenarios!(@real kafka, $crate::common::Backend::KAFKA,
            all(feature = "kafka"); $($name),*);
    };
    (@on rabbitmq; $($name:ident),*) => {
        $crate::scenarios!(@real rabbitmq, $crate::common::Backend::RABBITMQ,
            all(feature = "rabbitmq"); $($name),*);
    };
    (@on rabbitmq_sqlite; $($name:ident),*) => {
        $crate::scenarios!(@real rabbitmq_sqlite,
            $crate::common::Backend::RABBITMQ.on($crate::common::StoreKind::Sqlite),
            all(feature = "rabbitmq", feature = "sqlite"); $($name),*);
    };
    (@on kafka_sqlite; $($name:ident),*) => {
        $crate::scenarios!(@real kafka_sqlite,
            $crate::common::Backend::KAFKA.on($crate::common::StoreKind::Sqlite),
            all(feature = "kafka", feature = "sqlite"); $($name),*);
    };
    (@on kafka_postgres; $($name:ident),*) => {
        $crate::scenarios!(@real kafka_postgres,
            $crate::common::Backend::KAFKA.on($crate::common::StoreKind::Postgres),
            all(feature = "kafka", feature = "postgres"); $($name),*);
    };
    (@on rabbitmq_postgres; $($name:ident),*) => {
        $crate::scenarios!(@real rabbitmq_postgres,
            $crate::common::Backend::RABBITMQ.on($crate::common::StoreKind::Postgres),
            all(feature = "rabbitmq", feature = "postgres"); $($name),*);
    };
    (@paused $module:ident, $backend:expr, $cfg:meta; $($name:ident),*) => {
        #[cfg($cfg)]
        mod $module {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name($backend).await
                }
            )*
        }
    };
    (@real $module:ident, $backend:expr, $cfg:meta; $($name:ident),*) => {
        #[cfg($cfg)]
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($backend).await
                }
            )*
        }
    };
}

/// Every scenario on memory, Kafka and RabbitMQ, each with the memory store.
#[macro_export]
macro_rules! on_every_transport {
    ($($name:ident),* $(,)?) => {
        $crate::scenarios! {
            memory: [$($name),*];
            kafka: [$($name),*];
            rabbitmq: [$($name),*];
        }
    };
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderPlaced.v1")]
pub struct OrderPlaced {
    pub order_id: u64,
    pub amount_cents: u64,
    pub sku: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "payments.CreditReserved.v1")]
pub struct CreditReserved {
    pub order_id: u64,
    pub amount_cents: u64,
    pub sku: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "inventory.StockReserved.v1")]
pub struct StockReserved {
    pub order_id: u64,
    pub sku: String,
}

// Written by hand, as without the derive.
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
        .completes_on::<OrderBackordered>()
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

/// The effects of an order aborted after inventory reserved stock but before payments
/// captured: each reservation undone once, and the order cancelled. Sorted, for comparing
/// with `sorted_effects`.
pub fn every_reservation_undone(order_id: u64) -> Vec<Effect> {
    sorted_effects(vec![
        effect("orders", "create_order", order_id),
        effect("payments", "reserve_credit", order_id),
        effect("inventory", "reserve_stock", order_id),
        effect("payments", "release_credit", order_id),
        effect("inventory", "release_stock", order_id),
        effect("orders", "cancel_order", order_id),
    ])
}

/// Inventory has no stock now but will: the order waits for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "inventory.StockBackordered.v1")]
pub struct StockBackordered {
    pub order_id: u64,
    pub sku: String,
}

/// A terminal event other than the confirmation: the order waits for stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "orders.OrderBackordered.v1")]
pub struct OrderBackordered {
    pub order_id: u64,
}

/// Inventory's step has two outcomes, each with its own consumers and compensation.
#[derive(Emit)]
pub enum StockOutcome {
    Reserved(StockReserved),
    Backordered(StockBackordered),
}

/// `(source, type)` of the events of a completed order saga, in order.
pub fn completed_flow() -> Vec<(String, String)> {
    vec![
        ev("orders", OrderPlaced::TYPE),
        ev("payments", CreditReserved::TYPE),
        ev("inventory", StockReserved::TYPE),
        ev("payments", PaymentCaptured::TYPE),
        ev("orders", OrderConfirmed::TYPE),
    ]
}

/// Payments as a stateful handler, to exercise the `StepHandler` trait as users write it.
#[derive(Clone)]
struct Payments(Arc<World>);

impl StepHandler<OrderPlaced> for Payments {
    type Output = CreditReserved;

    async fn handle(&self, order: OrderPlaced, cx: Context) -> StepResult<CreditReserved> {
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
        self.0
            .record(&cx, "payments", "reserve_credit", order.order_id)
            .await?;
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

    async fn handle(&self, stock: StockReserved, cx: Context) -> StepResult<PaymentCaptured> {
        self.0
            .record(&cx, "payments", "capture_payment", stock.order_id)
            .await?;
        self.0.gate.at(stock.order_id).await;
        Ok(Step::done(PaymentCaptured {
            order_id: stock.order_id,
        }))
    }
}

/// Where the services' stores are: one per service, reopened from here when it restarts.
enum Stores {
    /// One memory store per service, kept across restarts as a process would keep it.
    Memory(HashMap<&'static str, Arc<MemoryStore>>),
    /// `{directory}/{service}.db`.
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    /// One database, shared by the three services.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

/// The services of one test, on one transport and one kind of store, sharing one clock.
pub struct Harness {
    pub backend: Backend,
    pub transport: Arc<dyn Transport>,
    pub memory: Option<MemoryTransport>,
    dead_letters: DeadLetterLog,
    pub clock: TokioClock,
    pub world: Arc<World>,
    pub log: SagaLog,
    stores: Stores,
    /// Each service's store as it last opened it.
    opened: Mutex<HashMap<&'static str, Arc<dyn Store>>>,
    pub running: HashMap<&'static str, RunningService>,
    /// Where the services record metrics; default: the global meter provider.
    pub meter: Option<Meter>,
    /// The saga services start with from here on; default: `saga`.
    pub saga: Saga,
    /// The options services start with; default: `test_options`.
    options: Option<ServiceOptions>,
    next_order: Mutex<u64>,
    /// The broker's URL, for services that get a connection of their own.
    broker_url: Option<String>,
    /// Declared last, so the broker outlives every client dropped with the harness.
    #[cfg(feature = "kafka")]
    kafka: Option<choreo_testkit::KafkaBroker>,
    #[cfg(feature = "rabbitmq")]
    rabbitmq: Option<choreo_testkit::RabbitMqBroker>,
    #[cfg(feature = "sqlite")]
    _files: Option<TempDir>,
}

/// A directory removed when dropped.
#[cfg(feature = "sqlite")]
struct TempDir(std::path::PathBuf);

#[cfg(feature = "sqlite")]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        // Three units: on real time, an initiator busy with a slow store or broker still
        // fires first, as the rule intends, rather than a participant after a short grace.
        .deadline_grace(backend.units(3))
        .redelivery_delay(Duration::from_millis(50))
}

impl Harness {
    /// All three services on `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::start_metered(backend, None).await
    }

    /// All three services on `backend`, recording their metrics with `meter`.
    pub async fn start_metered(backend: Backend, meter: Option<Meter>) -> Self {
        let mut harness = Self::prepare(backend).await;
        harness.meter = meter;
        harness.start_all().await;
        harness
    }

    /// All three services on `memory`, with memory stores.
    pub async fn memory_with(memory: MemoryTransport) -> Self {
        let mut harness = Self::on_memory(memory, Backend::MEMORY).await;
        harness.start_all().await;
        harness
    }

    /// The transport and the stores of `backend`; no service started yet.
    pub async fn prepare(backend: Backend) -> Self {
        if backend.via != Via::Memory {
            // (A test of the spans sets the process's subscriber itself, before the first
            // harness of the in-memory transport.)
            logs::show_logs();
        }
        match backend.via {
            Via::Memory => Self::on_memory(MemoryTransport::new(), backend).await,
            #[cfg(feature = "kafka")]
            Via::Kafka => {
                let broker = choreo_testkit::KafkaBroker::start()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let url = format!(
                    "{}?session.timeout.ms=2000&commit.interval.ms=100&message.timeout.ms=10000&rdkafka.fetch.wait.max.ms=20",
                    broker.url()
                );
                let transport = choreo::connect(&url).await.unwrap();
                let mut harness = Self::on(backend, transport).await;
                harness.broker_url = Some(url);
                harness.kafka = Some(broker);
                harness
            }
            #[cfg(feature = "rabbitmq")]
            Via::RabbitMq => {
                let broker = choreo_testkit::RabbitMqBroker::start()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let url = format!("{}?reconnect.max.ms=1000", broker.url());
                let transport = choreo::connect(&url).await.unwrap();
                let mut harness = Self::on(backend, transport).await;
                harness.broker_url = Some(url);
                harness.rabbitmq = Some(broker);
                harness
            }
        }
    }

    /// No service started yet, on `memory` (which may misbehave on purpose) and `store`.
    pub async fn prepare_on_memory(memory: MemoryTransport, store: StoreKind) -> Self {
        Self::on_memory(memory, Backend::MEMORY.on(store)).await
    }

    async fn on_memory(memory: MemoryTransport, backend: Backend) -> Self {
        let mut harness = Self::on(backend, Arc::new(memory.clone())).await;
        harness.memory = Some(memory);
        harness
    }

    /// No service started yet, on `transport`, with `backend`'s stores.
    async fn on(backend: Backend, transport: Arc<dyn Transport>) -> Self {
        let definition = saga(backend.timeout());
        let (log, dead_letters) = tokio::join!(
            SagaLog::start(Arc::clone(&transport), &definition, "observer"),
            DeadLetterLog::start(Arc::clone(&transport), TOPIC),
        );
        #[cfg(feature = "sqlite")]
        let mut files = None;
        let (stores, ledger) = match backend.store {
            StoreKind::Memory => (
                Stores::Memory(
                    SERVICES
                        .iter()
                        .map(|name| (*name, Arc::new(MemoryStore::new())))
                        .collect(),
                ),
                Ledger::Memory(Mutex::default()),
            ),
            #[cfg(feature = "sqlite")]
            StoreKind::Sqlite => {
                let directory =
                    std::env::temp_dir().join(format!("choreo-saga-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&directory).unwrap();
                for service in SERVICES {
                    world::create_sqlite_ledger(&directory.join(format!("{service}.db")));
                }
                files = Some(TempDir(directory.clone()));
                (Stores::Sqlite(directory.clone()), Ledger::Sqlite(directory))
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => {
                let server = choreo_testkit::PostgresServer::shared()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let url = server
                    .database()
                    .await
                    .unwrap_or_else(|error| panic!("{error}"));
                let pool = choreo::postgres::sqlx::PgPool::connect(&url).await.unwrap();
                world::create_postgres_ledger(&pool).await;
                (Stores::Postgres(url), Ledger::Postgres(pool))
            }
        };
        Self {
            backend,
            transport,
            memory: None,
            #[cfg(feature = "kafka")]
            kafka: None,
            #[cfg(feature = "rabbitmq")]
            rabbitmq: None,
            #[cfg(feature = "sqlite")]
            _files: files,
            dead_letters,
            clock: TokioClock::new(),
            world: Arc::new(World::new(ledger)),
            log: log.unwrap(),
            stores,
            opened: Mutex::default(),
            running: HashMap::new(),
            meter: None,
            saga: definition,
            options: None,
            next_order: Mutex::new(0),
            broker_url: None,
        }
    }

    /// `n` units of scenario time on this backend.
    pub fn units(&self, n: u64) -> Duration {
        self.backend.units(n)
    }

    /// The options every service of the harness runs with.
    pub fn options(&self) -> ServiceOptions {
        self.options
            .clone()
            .unwrap_or_else(|| test_options(self.backend))
    }

    /// Changes the options services start with from here on.
    pub fn tune(&mut self, change: impl FnOnce(ServiceOptions) -> ServiceOptions) {
        self.options = Some(change(self.options()));
    }

    /// Stores opened from here on hold at most `connections` connections each to the
    /// database (the store URL's `pool.max_connections`); other stores are not pooled.
    #[cfg(feature = "postgres")]
    pub fn pool_store_connections(&mut self, connections: u32) {
        if let Stores::Postgres(url) = &mut self.stores {
            let separator = if url.contains('?') { '&' } else { '?' };
            url.push_str(&format!("{separator}pool.max_connections={connections}"));
        }
    }

    /// Waits for the first event of any saga, and returns that saga.
    pub async fn wait_for_a_saga(&self) -> SagaId {
        let deadline = tokio::time::Instant::now() + self.units(100);
        loop {
            if let Some(saga) = self.log.sagas().first() {
                return *saga;
            }
            assert!(tokio::time::Instant::now() < deadline, "no saga started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Service `name`'s store: the same memory store across restarts, or its database
    /// opened again, as a restarted process would.
    pub async fn open_store(&self, name: &'static str) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match &self.stores {
            Stores::Memory(stores) => Arc::clone(&stores[name]) as Arc<dyn Store>,
            #[cfg(feature = "sqlite")]
            Stores::Sqlite(directory) => {
                let url = format!(
                    "sqlite://{}",
                    directory.join(format!("{name}.db")).display()
                );
                choreo::open_store(&url).await.unwrap()
            }
            #[cfg(feature = "postgres")]
            Stores::Postgres(url) => choreo::open_store(url).await.unwrap(),
        };
        self.opened.lock().unwrap().insert(name, Arc::clone(&store));
        store
    }

    /// Publishes bytes that need not be an event, as a producer outside choreo would. On
    /// Kafka that producer raised librdkafka's `message.max.bytes` (1 000 000 by default) to
    /// 16 MiB, to send larger messages than choreo's own producer does.
    pub async fn publish_raw(&self, topic: &str, key: Option<&str>, message: choreo::RawMessage) {
        if let Some(memory) = &self.memory {
            memory.publish_raw(topic, key, message).unwrap();
            return;
        }
        #[cfg(feature = "kafka")]
        if let Some(broker) = &self.kafka {
            let url = choreo::TransportUrl::parse(&format!(
                "{}?rdkafka.message.max.bytes=16777216",
                broker.url()
            ))
            .unwrap();
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

    /// A connection of its own to the harness's broker (the same in-process broker on
    /// memory), for a service that is to crash with its connection.
    pub async fn own_connection(&self) -> Arc<dyn Transport> {
        match &self.broker_url {
            Some(url) => choreo::connect(url).await.unwrap(),
            None => Arc::clone(&self.transport),
        }
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
        let mut services = Vec::new();
        for name in SERVICES {
            services.push((name, self.service(name, self.options()).await));
        }
        let started =
            futures_util::future::join_all(services.into_iter().map(|(name, service)| {
                let transport = Arc::clone(&self.transport);
                async move { (name, service.run(transport).await.unwrap()) }
            }))
            .await;
        self.running.extend(started);
    }

    /// Starts (or restarts) service `name`, from its store.
    pub async fn start_service(&mut self, name: &'static str) {
        self.start_with(name, self.options()).await;
    }

    /// Starts (or restarts) service `name` with `options`.
    pub async fn start_with(&mut self, name: &'static str, options: ServiceOptions) {
        self.run_on(name, options, Arc::clone(&self.transport))
            .await;
    }

    /// Starts (or restarts) service `name` on `transport`, a connection of its own (one
    /// with faults, say).
    pub async fn start_on(&mut self, name: &'static str, transport: Arc<dyn Transport>) {
        self.run_on(name, self.options(), transport).await;
    }

    async fn run_on(
        &mut self,
        name: &'static str,
        options: ServiceOptions,
        transport: Arc<dyn Transport>,
    ) {
        let service = self.service(name, options).await;
        let running = service.run(transport).await.unwrap();
        self.running.insert(name, running);
    }

    /// The id the next order placed gets.
    pub fn next_order_id(&self) -> u64 {
        *self.next_order.lock().unwrap() + 1
    }

    /// Restarts inventory on a connection of its own that stops it at `point` once, in the
    /// handling of order `order_id`, as a crash would there.
    pub async fn start_inventory_to_crash_at(&mut self, point: CrashPoint, order_id: u64) {
        if let Some(running) = self.running.remove("inventory") {
            running.shutdown().await;
        }
        self.world.stalls.arm(point, order_id);
        let transport = Arc::new(faults::Faulty::new(
            self.own_connection().await,
            Arc::clone(&self.world),
            StockReserved::TYPE,
            CreditReserved::TYPE,
        ));
        self.start_on("inventory", transport).await;
    }

    /// Kills service `name` as a crash would: its tasks are aborted and its connection
    /// dropped, nothing is shut down gracefully.
    pub fn kill(&mut self, name: &str) {
        self.running.remove(name).unwrap().kill();
    }

    pub async fn service(&self, name: &'static str, options: ServiceOptions) -> Service {
        let builder = Service::builder(name, &self.saga)
            .store(self.open_store(name).await)
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
                let backorder_world = Arc::clone(&world);
                builder
                    .initiates::<OrderPlaced>()
                    .compensate(move |order: OrderPlaced, cx: Context| {
                        let world = Arc::clone(&cancel_world);
                        async move {
                            world
                                .record(&cx, "orders", "cancel_order", order.order_id)
                                .await
                        }
                    })
                    .step(move |backordered: StockBackordered, cx: Context| {
                        let world = Arc::clone(&backorder_world);
                        async move {
                            if world.behaviour().reject_confirmation {
                                return Ok(Step::reject("the customer will not wait for stock"));
                            }
                            world
                                .record(&cx, "orders", "await_stock", backordered.order_id)
                                .await?;
                            Ok(Step::done(OrderBackordered {
                                order_id: backordered.order_id,
                            }))
                        }
                    })
                    .step(move |paid: PaymentCaptured, cx: Context| {
                        let world = Arc::clone(&world);
                        async move {
                            if world.behaviour().reject_confirmation {
                                return Ok(Step::reject("the customer cancelled the order"));
                            }
                            world
                                .record(&cx, "orders", "confirm_order", paid.order_id)
                                .await?;
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
                    .compensate(move |credit: CreditReserved, cx: Context| {
                        let world = Arc::clone(&refund_world);
                        async move {
                            let attempt = world.attempt("release_credit", credit.order_id);
                            if attempt <= world.behaviour().refund_failures {
                                return Err(HandlerError::transient("ledger unavailable"));
                            }
                            world
                                .record(&cx, "payments", "release_credit", credit.order_id)
                                .await
                        }
                    })
                    .step::<StockReserved, _>(Payments(world))
                    .compensate(move |captured: PaymentCaptured, cx: Context| {
                        let world = Arc::clone(&capture_world);
                        async move {
                            world
                                .record(&cx, "payments", "refund_payment", captured.order_id)
                                .await
                        }
                    })
                    .build()
            }
            "inventory" => {
                let release_world = Arc::clone(&world);
                let unorder_world = Arc::clone(&world);
                builder
                    .step(move |credit: CreditReserved, cx: Context| {
                        let world = Arc::clone(&world);
                        async move { reserve_stock(&world, credit, cx).await }
                    })
                    .compensate(move |stock: StockReserved, cx: Context| {
                        let world = Arc::clone(&release_world);
                        async move {
                            world
                                .record(&cx, "inventory", "release_stock", stock.order_id)
                                .await
                        }
                    })
                    .compensate(move |backordered: StockBackordered, cx: Context| {
                        let world = Arc::clone(&unorder_world);
                        async move {
                            world
                                .record(&cx, "inventory", "cancel_backorder", backordered.order_id)
                                .await
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
        self.order(amount_cents, sku, SagaStart::new()).await
    }

    /// Places an order whose saga starts as `how` says (deadline, saga data).
    pub async fn place_order_as(
        &self,
        amount_cents: u64,
        sku: &str,
        how: SagaStart,
    ) -> (u64, SagaId) {
        self.order(amount_cents, sku, how).await
    }

    /// Places an order whose saga has `timeout` instead of the saga's default.
    pub async fn place_order_within(
        &self,
        amount_cents: u64,
        sku: &str,
        timeout: Duration,
    ) -> (u64, SagaId) {
        self.order(amount_cents, sku, SagaStart::new().within(timeout))
            .await
    }

    /// Orders creates the order and starts its saga: on a SQL store both in one
    /// transaction, the order row and the saga's start committed together.
    async fn order(&self, amount_cents: u64, sku: &str, how: SagaStart) -> (u64, SagaId) {
        let order_id = {
            let mut next = self.next_order.lock().unwrap();
            *next += 1;
            *next
        };
        let order = OrderPlaced {
            order_id,
            amount_cents,
            sku: sku.to_owned(),
        };
        let orders = &self.running["orders"];
        let mut tx = orders.begin();
        self.world
            .record_in(&tx, "orders", "create_order", order_id)
            .await;
        let saga = tx.start_saga_with(order, how).unwrap();
        tx.commit().await.unwrap();
        (order_id, saga)
    }

    /// Waits (on paused time: instantly) for the saga to end, acknowledged by `participants`.
    pub async fn outcome_among(&self, saga: SagaId, participants: &[&str]) -> SagaOutcome {
        self.log
            .wait_for_outcome(saga, participants, self.units(200))
            .await
            .unwrap_or_else(|not_ended| panic!("{not_ended}"))
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

    /// Waits until every service's record of `saga` is finished (completed, or aborted and
    /// acknowledged): the topic shows an outcome before the last handlings commit.
    pub async fn settled(&self, saga: SagaId) {
        settled_in(saga, &SERVICES, self.units(100), async |service, saga| {
            self.record(service, saga).await
        })
        .await;
    }

    /// Lets every deadline, grace period and retry that can still fire run out.
    pub async fn settle(&self) {
        tokio::time::sleep(if self.backend.paused() {
            self.units(120)
        } else {
            self.units(14)
        })
        .await;
    }

    /// Service `name`'s record of `saga`, as its store holds it.
    pub async fn record(&self, service: &'static str, saga: SagaId) -> Option<SagaRecord> {
        let store = match self.opened.lock().unwrap().get(service) {
            Some(store) => Arc::clone(store),
            None => panic!("{service} never opened its store"),
        };
        store.load(service, saga, None).await.unwrap().record
    }

    /// Whether service `name` has `event` in its inbox.
    pub async fn handled(&self, service: &'static str, event: &Envelope) -> bool {
        let store = Arc::clone(&self.opened.lock().unwrap()[service]);
        store
            .load(service, event.saga_id, Some(event.id))
            .await
            .unwrap()
            .handled
    }

    /// Every committed effect on `order_id`, in order.
    pub async fn effects(&self, order_id: u64) -> Vec<Effect> {
        self.world.effects(order_id).await
    }

    /// `(source, type)` of every event of the saga, in order.
    pub fn flow(&self, saga: SagaId) -> Vec<(String, String)> {
        self.log.flow(saga)
    }
}

async fn reserve_stock(
    world: &World,
    credit: CreditReserved,
    cx: Context,
) -> StepResult<StockOutcome> {
    world
        .stalls
        .at(CrashPoint::BeforeStep, Some(credit.order_id))
        .await;
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
    if behaviour.backordered.contains(&credit.sku) {
        world
            .record(&cx, "inventory", "backorder_stock", credit.order_id)
            .await?;
        return Ok(Step::done(StockOutcome::Backordered(StockBackordered {
            order_id: credit.order_id,
            sku: credit.sku,
        })));
    }
    world
        .record(&cx, "inventory", "reserve_stock", credit.order_id)
        .await?;
    world
        .stalls
        .at(CrashPoint::AfterBusinessWrite, Some(credit.order_id))
        .await;
    Ok(Step::done(StockOutcome::Reserved(StockReserved {
        order_id: credit.order_id,
        sku: credit.sku,
    })))
}

/// Waits, up to `within`, until `record` finds each of `services`' records of `saga` finished
/// (completed, or aborted and acknowledged).
pub async fn settled_in(
    saga: SagaId,
    services: &[&'static str],
    within: Duration,
    record: impl AsyncFn(&'static str, SagaId) -> Option<SagaRecord>,
) {
    let until = tokio::time::Instant::now() + within;
    for &service in services {
        record_when(
            service,
            saga,
            until,
            &record,
            "finished",
            SagaRecord::is_finished,
        )
        .await;
    }
}

/// Waits, until `until`, for `record` to find `service`'s record of `saga` such that `done`
/// holds for it, and returns it; the assertion says that `service` never `what` the saga.
pub async fn record_when(
    service: &'static str,
    saga: SagaId,
    until: tokio::time::Instant,
    record: impl AsyncFn(&'static str, SagaId) -> Option<SagaRecord>,
    what: &str,
    done: impl Fn(&SagaRecord) -> bool,
) -> SagaRecord {
    loop {
        if let Some(record) = record(service, saga).await.filter(|record| done(record)) {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{service} never {what} saga {saga}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outcome of a saga aborted for `reason` and compensated in full.
pub fn compensated(reason: AbortReason) -> SagaOutcome {
    SagaOutcome::Compensated {
        reason,
        failed: vec![],
    }
}

/// Shorthand for an expected `(source, type)` pair.
pub fn ev(source: &str, event_type: &str) -> (String, String) {
    (source.to_owned(), event_type.to_owned())
}

pub const ABORTED: &str = "choreo.SagaAborted.v1";
pub const COMPENSATED: &str = "choreo.SagaCompensated.v1";

/// Every service's acknowledgement of an abort, sorted: the tail of an aborted saga's flow,
/// which arrives in any order.
pub fn every_acknowledgement() -> Vec<(String, String)> {
    sorted(SERVICES.map(|service| ev(service, COMPENSATED)).to_vec())
}

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
    acknowledgements_in(&h.log.events(saga))
}

/// The acknowledgements among `events`, by service; each service acknowledges once.
pub fn acknowledgements_in(events: &[Envelope]) -> HashMap<String, SagaCompensated> {
    let mut acks = HashMap::new();
    for event in events {
        if event.kind == SagaKind::Compensated {
            let ack: SagaCompensated = data(event);
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
            joined_causes: Vec::new(),
            deadline,
            kind,
            trace: TraceContext::new_root(),
            data: serde_json::value::to_raw_value(event).unwrap(),
            saga_data: Default::default(),
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

    /// Asserts that every service's record of `saga` says `status`.
    pub async fn assert_every_status(&self, saga: SagaId, status: choreo::SagaStatus) {
        for service in SERVICES {
            let record = self.record(service, saga).await.unwrap();
            assert_eq!(record.status, status, "{service}");
        }
    }

    pub async fn publish(&self, envelope: Envelope) {
        self.transport.publish(TOPIC, envelope).await.unwrap();
    }

    pub fn deadline_in(&self, timeout: Duration) -> Deadline {
        Deadline::after(self.clock.now(), timeout)
    }
}

/// A dead letter as seen on the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetter {
    pub reason: String,
    pub body: Vec<u8>,
    /// The message without the `choreo-dead-letter-*` headers.
    pub message: choreo::RawMessage,
    /// The `choreo-dead-letter-*` headers, their values as text.
    pub marks: Vec<(String, String)>,
}

impl DeadLetter {
    /// The `choreo-dead-letter-*` header `name`.
    pub fn mark(&self, name: &str) -> Option<&str> {
        self.marks
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl std::fmt::Debug for DeadLetter {
    /// A large body or header value is shown by its size and first bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            if bytes.len() > 200 {
                format!("{text}... ({} bytes)", bytes.len())
            } else {
                text
            }
        };
        let headers: Vec<_> = self
            .message
            .headers
            .iter()
            .map(|(name, value)| (name, short(value)))
            .collect();
        f.debug_struct("DeadLetter")
            .field("reason", &self.reason)
            .field("body", &short(&self.body))
            .field("headers", &headers)
            .field("marks", &self.marks)
            .finish()
    }
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
                let marks = message
                    .headers
                    .iter()
                    .filter(|(key, _)| key.starts_with("choreo-dead-letter-"))
                    .map(|(key, value)| {
                        (key.to_string(), String::from_utf8_lossy(value).into_owned())
                    })
                    .collect();
                message
                    .headers
                    .retain(|key, _| !key.starts_with("choreo-dead-letter-"));
                recorded.lock().unwrap().push(DeadLetter {
                    reason,
                    body: message.body.clone(),
                    message,
                    marks,
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

/// Metrics the services record, kept in memory for a test to count.
pub struct Metered {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

impl Metered {
    pub fn in_memory() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Self { exporter, provider }
    }

    /// The meter to give the services (`Harness::meter`).
    pub fn meter(&self) -> Meter {
        opentelemetry::metrics::MeterProvider::meter(&self.provider, "choreo-tests")
    }

    /// Counter `name`'s total (a histogram's count) over the points with `attributes`, as
    /// recorded so far.
    pub fn count(&self, name: &str, attributes: &[(&str, &str)]) -> u64 {
        self.provider.force_flush().unwrap();
        let exported = self.exporter.get_finished_metrics().unwrap();
        exported
            .last()
            .map_or(0, |metrics| sum(metrics, name, attributes))
    }
}

/// The sum of counter `name` (or the count of histogram `name`) over the data points that
/// carry every one of `attributes`; zero when nothing was recorded.
fn sum(metrics: &ResourceMetrics, name: &str, attributes: &[(&str, &str)]) -> u64 {
    let matches = |point: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
        let point: HashMap<String, String> = point
            .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect();
        attributes
            .iter()
            .all(|(key, value)| point.get(*key).map(String::as_str) == Some(*value))
    };
    let mut total = 0;
    for metric in metrics
        .scope_metrics()
        .flat_map(|scope| scope.metrics())
        .filter(|metric| metric.name() == name)
    {
        match metric.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                for point in sum.data_points() {
                    if matches(&mut point.attributes()) {
                        total += point.value();
                    }
                }
            }
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                for point in histogram.data_points() {
                    if matches(&mut point.attributes()) {
                        total += point.count();
                    }
                }
            }
            other => panic!("{name} has unexpected data {other:?}"),
        }
    }
    total
}

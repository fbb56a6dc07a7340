//! A saga participant: its steps and compensations, and the runtime that applies the saga
//! rules (docs/concepts.md) to every event it receives, one module per rule.

mod abort;
mod compensation_retry;
mod complete;
mod dead_letter;
mod deadline;
mod describe;
mod dispatch;
mod handling;
mod options;
mod order;
mod outbox;
mod recovery;
mod redrive;
mod runtime;
mod start;
mod step;
mod takeover;
mod transaction;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use opentelemetry::metrics::Meter;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::task::TaskTracker;

pub use self::options::ServiceOptions;
use self::runtime::{Runtime, Tokens};
pub use self::start::SagaStart;
pub use self::transaction::SagaTransaction;
use crate::clock::{Clock, SystemClock};
use crate::compensation::{erase_compensation, Compensation, ErasedCompensation};
use crate::control::{self, ServiceDescribed};
use crate::deadline::Deadline;
use crate::event::Event;
use crate::handler::{erase_join, erase_step, ErasedStep, JoinHandler, Parts, StepHandler};
use crate::ids::SagaId;
use crate::saga::Saga;
use crate::store::{MemoryStore, Store, StoreError};
use crate::transport::{Transport, TransportError};

/// A participant of one saga, built with [`Service::builder`] and started with
/// [`Service::run`].
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// use choreo_core::{Context, Event, HandlerError, Saga, Service, Step, StepResult};
///
/// #[derive(Serialize, Deserialize)]
/// struct OrderPlaced { order_id: u64, amount_cents: u64 }
/// impl Event for OrderPlaced { const TYPE: &'static str = "orders.OrderPlaced.v1"; }
///
/// #[derive(Serialize, Deserialize)]
/// struct CreditReserved { order_id: u64, amount_cents: u64 }
/// impl Event for CreditReserved { const TYPE: &'static str = "payments.CreditReserved.v1"; }
///
/// async fn reserve_credit(order: OrderPlaced, _cx: Context) -> StepResult<CreditReserved> {
///     if order.amount_cents > 10_000 {
///         return Ok(Step::reject("over the credit limit"));
///     }
///     Ok(Step::done(CreditReserved { order_id: order.order_id, amount_cents: order.amount_cents }))
/// }
///
/// async fn release_credit(done: CreditReserved, _cx: Context) -> Result<(), HandlerError> {
///     Ok(()) // give `done.amount_cents` back; safe to run twice
/// }
///
/// # #[derive(Serialize, Deserialize)] struct OrderConfirmed { order_id: u64 }
/// # impl Event for OrderConfirmed { const TYPE: &'static str = "orders.OrderConfirmed.v1"; }
/// let saga = Saga::new("orders.saga").completes_on::<OrderConfirmed>();
/// let payments = Service::builder("payments", &saga)
///     .step(reserve_credit)
///     .compensate(release_credit)
///     .build()?;
/// # Ok::<(), choreo_core::BuildError>(())
/// ```
pub struct Service {
    definition: Definition,
}

/// Everything a service was built from.
pub(crate) struct Definition {
    pub(crate) name: Arc<str>,
    pub(crate) version: String,
    pub(crate) saga: Saga,
    pub(crate) steps: HashMap<&'static str, Arc<dyn ErasedStep>>,
    pub(crate) compensations: HashMap<&'static str, Arc<dyn ErasedCompensation>>,
    pub(crate) initiates: HashSet<&'static str>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: ServiceOptions,
    pub(crate) meter: Option<Meter>,
}

/// Builds a [`Service`].
pub struct ServiceBuilder {
    definition: Definition,
    emitted: HashSet<&'static str>,
    problems: Vec<String>,
}

/// A service definition that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service `{service}` is misconfigured: {}", problems.join("; "))]
pub struct BuildError {
    /// The service.
    pub service: String,
    /// Every problem found.
    pub problems: Vec<String>,
}

impl Service {
    /// Starts the definition of service `name` (also its consumer group) in `saga`.
    pub fn builder(name: impl Into<String>, saga: &Saga) -> ServiceBuilder {
        ServiceBuilder {
            definition: Definition {
                name: Arc::from(name.into()),
                version: "unknown".to_owned(),
                saga: saga.clone(),
                steps: HashMap::new(),
                compensations: HashMap::new(),
                initiates: HashSet::new(),
                store: Arc::new(MemoryStore::new()),
                clock: Arc::new(SystemClock),
                options: ServiceOptions::default(),
                meter: None,
            },
            emitted: HashSet::new(),
            problems: Vec::new(),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.definition.name
    }

    /// What the service says about itself when it starts (`choreo.ServiceDescribed.v1`):
    /// its steps, compensations, starts and the saga's terminal events, sorted by type.
    /// `instance` is left empty: each start of the service fills it with a fresh id.
    pub fn description(&self) -> ServiceDescribed {
        self.definition.describe(String::new())
    }

    /// Picks up what the service's store kept (see [`ServiceBuilder::store`]), joins the
    /// saga's topic as consumer group `name` on `transport`, and starts handling events,
    /// firing deadlines and sending what the store holds unsent, in the background.
    pub async fn run(self, transport: Arc<dyn Transport>) -> Result<RunningService, RunError> {
        let definition = self.definition;
        let held = hold(&definition).await?;
        let recovery = definition.store.recover(&definition.name).await?;
        if !definition.store.is_durable() && transport.name() != "memory" {
            tracing::warn!(
                service = %definition.name, store = definition.store.name(), transport = transport.name(),
                "saga state is kept in process memory: it dies with the process, and another instance of this service cannot compensate this one's steps; open a durable store (sqlite://, postgres://) for these guarantees"
            );
        }
        let topics = [definition.saga.topic().to_owned()];
        let subscription = match definition.acted_on() {
            Some(types) => {
                transport
                    .subscribe_to_types(&definition.name, &topics, &types)
                    .await?
            }
            None => transport.subscribe(&definition.name, &topics).await?,
        };
        let tokens = Tokens::default();
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(definition.options.concurrency));
        let runtime = Arc::new(Runtime::new(definition, transport, tokens.clone()));
        let workers = (0..runtime.options().concurrency)
            .map(|_| tracker.spawn(Arc::clone(&runtime).work()).abort_handle())
            .collect();
        runtime.recover(recovery);
        let description = runtime
            .definition()
            .describe(uuid::Uuid::now_v7().to_string());
        let mut tasks = vec![
            // In the background: a broker that cannot take it now does not hold up the start.
            tokio::spawn(Arc::clone(&runtime).publish_description(description)),
            tokio::spawn(Arc::clone(&runtime).consume(subscription, permits)),
            tokio::spawn(Arc::clone(&runtime).fire_deadlines()),
            tokio::spawn(Arc::clone(&runtime).relay()),
            tokio::spawn(Arc::clone(&runtime).mark_sent()),
            tokio::spawn(Arc::clone(&runtime).purge()),
        ];
        if runtime.store().is_shared() {
            tasks.push(tokio::spawn(Arc::clone(&runtime).take_over()));
        }
        Ok(RunningService {
            runtime,
            tokens,
            tracker,
            workers,
            tasks,
            _held: held,
        })
    }
}

/// How long a starting service waits for an instance of itself that is stopping in the same
/// process (or another process) to let go of a store that keeps one instance per service.
const HOLD_WAIT: Duration = Duration::from_secs(5);

/// Reserves the store for this instance (see [`Store::hold`]), waiting a little for one
/// that is going away.
async fn hold(definition: &Definition) -> Result<Box<dyn Any + Send + Sync>, RunError> {
    let started = tokio::time::Instant::now();
    loop {
        match definition.store.hold(&definition.name).await {
            Ok(held) => return Ok(held),
            Err(error) if error.is_conflict() && started.elapsed() < HOLD_WAIT => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) if error.is_conflict() => return Err(RunError::AlreadyRunning(error)),
            Err(error) => return Err(RunError::Store(error)),
        }
    }
}

impl ServiceBuilder {
    /// The version the service says it runs in its description (`ServiceDescribed`), for
    /// telling apart two versions running at once; default `unknown`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.definition.version = version.into();
        self
    }

    /// Registers `handler` as the step run when event `E` arrives.
    pub fn step<E: Event, H: StepHandler<E>>(mut self, handler: H) -> Self {
        self.refuse_control(E::TYPE, "a step");
        let step = erase_step::<E, H>(handler);
        self.emitted.extend(step.output_types());
        if self.definition.steps.insert(E::TYPE, step).is_some() {
            self.problems
                .push(format!("two steps handle `{}`; register one", E::TYPE));
        }
        self
    }

    /// Registers `handler` as a join: a step that runs once, when an event of every type of
    /// `P` (a tuple of two to four event types) arrived for the saga, in any order. Until
    /// then the events that arrived wait in the service's journal (with a durable store, a
    /// restart keeps them); an abort meanwhile leaves the join nothing to do (each event's
    /// own service undoes it). The join runs with the [`Context`](crate::Context) of the
    /// event that arrived last, which causes the join's event; one arriving past the
    /// deadline is not kept, and the join does not run (rule 8). Of a type that arrives
    /// twice in one saga, the first event counts.
    pub fn join<P: Parts, H: JoinHandler<P>>(mut self, handler: H) -> Self {
        let join = erase_join::<P, H>(handler);
        self.emitted.extend(join.output_types());
        for (index, input) in P::TYPES.iter().enumerate() {
            self.refuse_control(input, "a join");
            if P::TYPES[..index].contains(input) {
                self.problems.push(format!(
                    "a join waits for `{input}` twice; list each type once"
                ));
            } else if self
                .definition
                .steps
                .insert(input, Arc::clone(&join))
                .is_some()
            {
                self.problems
                    .push(format!("two steps handle `{input}`; register one"));
            }
        }
        self
    }

    /// Registers `compensation` as the undo of the step that emitted `E` (or of starting the
    /// saga with `E`).
    pub fn compensate<E: Event, C: Compensation<E>>(mut self, compensation: C) -> Self {
        self.refuse_control(E::TYPE, "a compensation");
        let erased = erase_compensation::<E, C>(compensation);
        if self
            .definition
            .compensations
            .insert(E::TYPE, erased)
            .is_some()
        {
            self.problems.push(format!(
                "two compensations undo `{}`; register one",
                E::TYPE
            ));
        }
        self
    }

    /// Declares that this service starts sagas with event `E` (see
    /// [`RunningService::start_saga`]).
    pub fn initiates<E: Event>(mut self) -> Self {
        self.refuse_control(E::TYPE, "a saga start");
        self.definition.initiates.insert(E::TYPE);
        self.emitted.insert(E::TYPE);
        self
    }

    /// Where the service keeps its saga state (journal, inbox, outbox); default: a
    /// [`MemoryStore`] of its own, lost with the process. Open one from a URL with
    /// `choreo::open_store`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.definition.store = store;
        self
    }

    /// The clock; default: the system clock. Tests on paused tokio time pass a
    /// [`TokioClock`](crate::TokioClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.definition.clock = clock;
        self
    }

    /// Where the service's metrics go; default: the global meter provider's `choreo` meter
    /// as it is when the service runs. See [`telemetry::metrics`](crate::telemetry::metrics).
    pub fn meter(mut self, meter: Meter) -> Self {
        self.definition.meter = Some(meter);
        self
    }

    /// Tuning; see [`ServiceOptions`].
    pub fn options(mut self, options: ServiceOptions) -> Self {
        self.definition.options = options;
        self
    }

    /// Notes a problem when `event_type` is one of the runtime's own events, which every
    /// service ignores (docs/concepts.md, rule 6) and no handler may take.
    fn refuse_control(&mut self, event_type: &str, what: &str) {
        if control::is_control(event_type) {
            self.problems.push(format!(
                "{what} for `{event_type}`: types in the `{}` namespace are the runtime's own; pick another name",
                control::CONTROL_PREFIX
            ));
        }
    }

    /// Checks the definition and builds the service.
    pub fn build(mut self) -> Result<Service, BuildError> {
        let mut undone: Vec<_> = self
            .definition
            .compensations
            .keys()
            .filter(|undone| !self.emitted.contains(*undone))
            .copied()
            .collect();
        undone.sort_unstable();
        for event_type in undone {
            self.problems.push(format!(
                "a compensation undoes `{event_type}`, but no step of this service emits it and the service does not initiate with it"
            ));
        }
        let saga = &self.definition.saga;
        for terminal in saga.terminal_types() {
            let Some(emitter) = saga.sole_emitter(terminal) else {
                continue;
            };
            let emits = self.emitted.contains(terminal);
            if emitter != &*self.definition.name && emits {
                self.problems.push(format!(
                    "it emits `{terminal}`, which saga `{}` says `{emitter}` alone emits (`Saga::completes_on_from`), and `{emitter}` would never hear of the sagas this service completes; if more services emit it, declare it with `Saga::completes_on`",
                    saga.topic()
                ));
            } else if emitter == &*self.definition.name && !emits {
                self.problems.push(format!(
                    "saga `{}` says this service alone emits `{terminal}` (`Saga::completes_on_from`), so it does not subscribe to it, but no step of it emits it and it does not initiate with it; name the service that does",
                    saga.topic()
                ));
            }
        }
        if self.definition.steps.is_empty() && self.definition.initiates.is_empty() {
            self.problems
                .push("it has no step and initiates no saga".to_owned());
        }
        if !self.definition.saga.has_terminal() {
            self.problems.push(format!(
                "saga `{}` declares no terminal event (`Saga::completes_on`), so it could only end by abort",
                self.definition.saga.topic()
            ));
        }
        if !self.problems.is_empty() {
            return Err(BuildError {
                service: self.definition.name.to_string(),
                problems: self.problems,
            });
        }
        Ok(Service {
            definition: self.definition,
        })
    }
}

/// A service handling events. Dropping it stops it at once, as a crash would; call
/// [`shutdown`](Self::shutdown) to stop gracefully.
pub struct RunningService {
    runtime: Arc<Runtime>,
    tokens: Tokens,
    tracker: TaskTracker,
    /// The workers, aborted by a kill: the work in hand is dropped unsettled.
    workers: Vec<AbortHandle>,
    tasks: Vec<JoinHandle<()>>,
    /// The store's reservation for this instance ([`Store::hold`]): let go when it stops,
    /// however it stops.
    _held: Box<dyn Any + Send + Sync>,
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Its store could not give back what it kept.
    #[error("cannot recover the service's saga state: {0}")]
    Store(#[from] StoreError),
    /// Its store keeps one instance per service, and another one is running on it.
    #[error("cannot start: {0}")]
    AlreadyRunning(StoreError),
    /// It could not join its consumer group.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why a saga could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The service did not declare [`ServiceBuilder::initiates`] for this event.
    #[error("service `{service}` does not initiate sagas with `{event_type}`; declare it with `.initiates::<{event_type}>()`")]
    NotInitiator {
        /// The service.
        service: String,
        /// The event type.
        event_type: &'static str,
    },
    /// The event does not serialize.
    #[error("cannot serialize `{event_type}`: {source}")]
    Serialize {
        /// The event type.
        event_type: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed; the saga did not start.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunningService {
    /// The service's name.
    pub fn name(&self) -> &str {
        self.runtime.name()
    }

    /// Starts a saga with `event` and the saga's default timeout: records it in the store,
    /// then publishes it. Once this returns the saga is started; if the broker cannot take
    /// the event now, it is published when it can (also after a restart).
    pub async fn start_saga<E: Event>(&self, event: E) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new()).await
    }

    /// Starts a saga with `event` that must finish within `timeout` from now, by the
    /// service's clock.
    pub async fn start_saga_within<E: Event>(
        &self,
        event: E,
        timeout: std::time::Duration,
    ) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new().within(timeout))
            .await
    }

    /// Starts a saga with `event` that must finish by `deadline`.
    pub async fn start_saga_until<E: Event>(
        &self,
        event: E,
        deadline: Deadline,
    ) -> Result<SagaId, StartError> {
        self.start_saga_with(event, SagaStart::new().until(deadline))
            .await
    }

    /// Starts a saga with `event`, its deadline and saga data as `how` says.
    pub async fn start_saga_with<E: Event>(
        &self,
        event: E,
        how: SagaStart,
    ) -> Result<SagaId, StartError> {
        let (saga, handling) = self.runtime.start_as(event, how)?;
        self.commit_started(saga, handling).await
    }

    async fn commit_started(
        &self,
        saga: SagaId,
        handling: handling::Handling,
    ) -> Result<SagaId, StartError> {
        if !self.runtime.store().is_durable() {
            // The commit completes at once; what follows hands its events to the relay if
            // the caller stops waiting.
            self.runtime.commit_start(handling).await?;
            return Ok(saga);
        }
        // On a task of its own: a caller that stops waiting (a timeout around this call)
        // must not leave a start committed but neither published nor timed.
        let runtime = Arc::clone(&self.runtime);
        tokio::spawn(async move { runtime.commit_start(handling).await })
            .await
            .map_err(|error| StartError::Store(StoreError::new(error)))??;
        Ok(saga)
    }

    /// A transaction on the service's store in which the caller writes its own data and
    /// starts sagas: they are recorded with its writes and published if, and only if, it
    /// commits (see [`SagaTransaction`]).
    pub fn begin(&self) -> SagaTransaction {
        SagaTransaction::new(Arc::clone(&self.runtime))
    }

    /// Stops gracefully: takes no new events, finishes the ones being handled (up to
    /// [`ServiceOptions::shutdown_timeout`]) and leaves every unfinished event unacknowledged,
    /// for redelivery.
    pub async fn shutdown(mut self) {
        self.tokens.stop.cancel();
        self.tracker.close();
        let timeout = self.runtime.options().shutdown_timeout;
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.name(), ?timeout, "shutdown timed out; abandoning in-flight work unacknowledged");
            self.abort_workers();
            // An aborted task ends at its next wait.
            self.tracker.wait().await;
        }
        // The workers are done: what they sent last is marked sent before the tasks end.
        self.tokens.drained.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Stops at once, as a crash would: work in progress is abandoned unacknowledged.
    pub fn kill(self) {
        drop(self);
    }

    /// Aborts the workers and drops the work queued for them, unsettled: its deliveries go
    /// back to the broker now, not when the last handle on the runtime goes.
    fn abort_workers(&self) {
        for worker in &self.workers {
            worker.abort();
        }
        self.runtime.queues().clear();
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.tokens.stop.cancel();
        self.abort_workers();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for RunningService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningService")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.definition.steps.keys().collect();
        steps.sort_unstable();
        f.debug_struct("Service")
            .field("name", &self.definition.name)
            .field("saga", &self.definition.saga.topic())
            .field("steps", &steps)
            .finish_non_exhaustive()
    }
}

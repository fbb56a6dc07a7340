//! The saga console: a passive observer of a saga topic and its dead letters that records
//! every event into a store of its own, derives each saga's status from the events alone,
//! and serves the history, the timelines, the choreography graph and the dead letters as
//! pages and a JSON API (docs/console.md).
//!
//! ```no_run
//! use std::sync::Arc;
//! use choreo_monitor::{Monitor, MonitorStore};
//!
//! # async fn run(transport: Arc<dyn choreo_core::Transport>) -> Result<(), choreo_monitor::MonitorError> {
//! let monitor = Monitor::new(transport, "orders.saga")
//!     .store(MonitorStore::open("sqlite://choreo-monitor.db")?)
//!     .start("127.0.0.1:7878")
//!     .await?;
//! println!("console on http://{}", monitor.address());
//! monitor.serve().await;
//! # Ok(()) }
//! ```

mod actions;
mod error;
mod graph;
pub mod mermaid;
pub mod model;
pub mod pages;
mod recorder;
mod server;
mod status;
mod store;
mod time;
mod views;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use choreo_core::transport::dead_letter_topic;
use choreo_core::{Clock, SystemClock, Transport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

pub use crate::actions::{Actions, Requested};
pub use crate::error::MonitorError;
pub use crate::status::StuckAfter;
pub use crate::store::MonitorStore;
pub use crate::views::Views;

/// The consumer group the monitor reads with, unless told otherwise.
pub const DEFAULT_GROUP: &str = "choreo-monitor";

/// A monitor to start: which topic, where to keep what it sees, when a saga is stuck.
pub struct Monitor {
    transport: Arc<dyn Transport>,
    topic: String,
    dead_letters: String,
    group: String,
    store: Option<MonitorStore>,
    stuck_after: StuckAfter,
    requested_by: String,
    clock: Arc<dyn Clock>,
}

impl Monitor {
    /// A monitor of saga topic `topic` (and its dead letters, `<topic>.dlq`) on `transport`.
    pub fn new(transport: Arc<dyn Transport>, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        Self {
            transport,
            dead_letters: dead_letter_topic(&topic),
            topic,
            group: DEFAULT_GROUP.to_owned(),
            store: None,
            stuck_after: StuckAfter::default(),
            requested_by: "console".to_owned(),
            clock: Arc::new(SystemClock),
        }
    }

    /// Where to keep what it sees; default: a store in memory, lost with the process.
    pub fn store(mut self, store: MonitorStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Its consumer group (default [`DEFAULT_GROUP`]; the dead letters are read as
    /// `<group>.dead-letters`): durable, so that what is published while the monitor is
    /// down waits for it. Two monitors of one topic need two groups.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The dead-letter topic, when not `<topic>.dlq`.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letters = topic.into();
        self
    }

    /// When a saga counts as stuck.
    pub fn stuck_after(mut self, stuck_after: StuckAfter) -> Self {
        self.stuck_after = stuck_after;
        self
    }

    /// The clock that says how long sagas have run and whether they are past their
    /// deadline; default: the system clock. Tests on paused tokio time pass the services'
    /// [`TokioClock`](choreo_core::TokioClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Who the redrive and retry requests say asked (default `console`).
    pub fn requested_by(mut self, name: impl Into<String>) -> Self {
        self.requested_by = name.into();
        self
    }

    /// Starts recording and serves the console on `listen` (`127.0.0.1:0` for any free port).
    pub async fn start(self, listen: &str) -> Result<RunningMonitor, MonitorError> {
        let store = match self.store {
            Some(store) => store,
            None => MonitorStore::open("sqlite::memory:")?,
        };
        let events = self
            .transport
            .subscribe(&self.group, std::slice::from_ref(&self.topic))
            .await?;
        let letters = self
            .transport
            .subscribe(
                &format!("{}.dead-letters", self.group),
                std::slice::from_ref(&self.dead_letters),
            )
            .await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| MonitorError::Listen {
                address: listen.to_owned(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| MonitorError::Listen {
                address: listen.to_owned(),
                source,
            })?;
        let recorded = Arc::new(recorder::Recorded::default());
        let (deliveries, to_record) = mpsc::channel(4096);
        let mut tasks = JoinSet::new();
        tasks.spawn(recorder::read(events, false, deliveries.clone()));
        tasks.spawn(recorder::read(letters, true, deliveries));
        tasks.spawn(recorder::record(
            store.clone(),
            to_record,
            Arc::clone(&recorded),
        ));
        let views = Views {
            store: store.clone(),
            stuck_after: self.stuck_after,
            clock: self.clock,
        };
        let actions = Actions {
            views: views.clone(),
            transport: self.transport,
            topic: self.topic,
            requested_by: self.requested_by,
        };
        let (stop, mut stopped) = watch::channel(false);
        let app = server::router(actions.clone());
        tasks.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "the console stopped serving");
            }
        });
        Ok(RunningMonitor {
            address,
            actions,
            store,
            recorded,
            stop,
            tasks,
        })
    }
}

/// A monitor at work. Dropping it stops it at once, as a crash would.
pub struct RunningMonitor {
    address: SocketAddr,
    actions: Actions,
    store: MonitorStore,
    recorded: Arc<recorder::Recorded>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl RunningMonitor {
    /// Where the console listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The view models the console shows.
    pub fn views(&self) -> &Views {
        &self.actions.views
    }

    /// Redrive and retry, as the console does them.
    pub fn actions(&self) -> &Actions {
        &self.actions
    }

    /// Its store.
    pub fn store(&self) -> &MonitorStore {
        &self.store
    }

    /// Deliveries recorded since it started: `(received, new)`; a redelivery is received
    /// but not new.
    pub fn recorded(&self) -> (u64, u64) {
        (
            self.recorded.received.load(Ordering::Relaxed),
            self.recorded.added.load(Ordering::Relaxed),
        )
    }

    /// Stops serving and recording; what was received and not yet recorded comes again to
    /// the next monitor of the group.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the console stops serving (it does not on its own).
    pub async fn serve(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

//! choreo: choreography sagas for Rust.
//!
//! Services coordinate a business transaction only through events on a broker. Each service
//! registers steps and, next to each step, the compensation that undoes it. When a step
//! rejects, keeps failing, or the saga passes its deadline, every service that did work
//! undoes it, newest first, with no central orchestrator. Every event carries its saga id,
//! causation id, deadline and W3C trace context.
//!
//! The transport is chosen by a URL, so a service moves between brokers with no code change:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), choreo::ConnectError> {
//! let transport = choreo::connect("memory://").await?;
//! assert_eq!(transport.name(), "memory");
//! # Ok(())
//! # }
//! ```
//!
//! The store, where a service keeps its saga state so that a restart loses nothing, is
//! chosen by a URL too:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), choreo::OpenStoreError> {
//! let store = choreo::open_store("memory://").await?; // or sqlite://data/payments.db
//! assert_eq!(store.name(), "memory");
//! # Ok(())
//! # }
//! ```
//!
//! See the README for a whole service, and `docs/` for the saga rules.
#![cfg_attr(docsrs, feature(doc_cfg))]
//!
//! # Feature flags
//!
//! The in-memory transport (`memory://`) and store (`memory://`) are always compiled in.
//! Brokers and databases come with their own features; [`connect`] and [`open_store`] name
//! the ones a build lacks.
//!
//! - `sqlite` (default): `sqlite://PATH` stores, `choreo::sqlite`: the embedded durable
//!   store, one file per service.
//! - `postgres`: `postgres://` stores, `choreo::postgres`, on sqlx.
//! - `kafka`: `kafka://` URLs, `choreo::kafka`, on rdkafka with a bundled librdkafka and the
//!   system's OpenSSL (TLS, SCRAM).
//! - `rabbitmq`: `amqp://` URLs, `choreo::rabbitmq`, on lapin.
//! - `otlp` (default): [`telemetry::init`], logs, traces and metrics set up from the standard
//!   `OTEL_*` variables with OTLP/HTTP export. Without it, `choreo::telemetry` holds the span
//!   attribute and metric names only, and any `tracing-opentelemetry` setup works.
//! - `testkit`: `choreo::testkit`, brokers and databases for tests through testcontainers,
//!   and the transport and store conformance suites.

pub use choreo_core::*;
/// `#[derive(Emit)]` on an enum whose variants each hold one event: a step with several
/// outcomes. Implements [`Emit`](trait@Emit).
pub use choreo_derive::Emit;
/// `#[derive(Event)]` with `#[event(name = "service.Name.v1")]`: implements [`Event`](trait@Event).
pub use choreo_derive::Event;

/// The README's snippets, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The broker test kit and the transport conformance suite.
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub use choreo_testkit as testkit;

/// Traces and metrics: one saga, one trace. The spans and instruments the runtime records,
/// and with the `otlp` feature, [`init`](telemetry::init) to export them.
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub use choreo_telemetry as telemetry;

/// The in-memory transport: one process, broker semantics.
pub mod memory {
    pub use choreo_memory::{Chaos, DeadLetter, MemoryTransport};
}

use std::sync::Arc;
use std::time::Duration;

/// The schemes this build can connect to.
pub const SUPPORTED_SCHEMES: &[&str] = &[
    "memory",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "rabbitmq")]
    "amqp",
    #[cfg(feature = "rabbitmq")]
    "amqps",
];

/// The RabbitMQ transport.
#[cfg(feature = "rabbitmq")]
#[cfg_attr(docsrs, doc(cfg(feature = "rabbitmq")))]
pub mod rabbitmq {
    pub use choreo_rabbitmq::{RabbitMqConfig, RabbitMqTransport};
}

/// The Kafka transport.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka {
    pub use choreo_kafka::{KafkaConfig, KafkaTransport};
}

/// Connects to the transport named by `url`: `memory://` (or `memory://NAME` for a separate
/// in-process broker), `kafka://host:port[,host:port]?...` with the `kafka` feature, or
/// `amqp://user:pass@host:port/vhost?...` with the `rabbitmq` feature.
///
/// An unknown scheme, or one whose feature this build lacks, is a [`UrlError`] naming the
/// schemes compiled in. Passwords never appear in errors.
pub async fn connect(url: &str) -> Result<Arc<dyn Transport>, ConnectError> {
    let url = TransportUrl::parse(url)?;
    match url.scheme() {
        "memory" => Ok(Arc::new(memory::MemoryTransport::shared(
            url.host().unwrap_or_default(),
        ))),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(kafka::KafkaTransport::connect(&url).await?)),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Ok(Arc::new(rabbitmq::RabbitMqTransport::connect(&url).await?)),
        _ => Err(url.unsupported(SUPPORTED_SCHEMES).into()),
    }
}

/// [`connect`], trying again while the broker cannot be reached, for up to `within`: what
/// a service does at start, when its broker may come up after it (a deploy of both at once,
/// a broker restarting). Each failed try is logged at WARN with the error (passwords
/// redacted); tries are 0.5 s apart, doubling up to 10 s. A URL that cannot work fails at
/// once; after `within`, the last failure is returned.
pub async fn connect_within(
    url: &str,
    within: Duration,
) -> Result<Arc<dyn Transport>, ConnectError> {
    retrying(
        within,
        "broker",
        || connect(url),
        |error| matches!(error, ConnectError::Url(_)),
    )
    .await
}

/// [`open_store`], trying again while the database cannot be opened or reached, for up to
/// `within`, as [`connect_within`] does.
pub async fn open_store_within(
    url: &str,
    within: Duration,
) -> Result<Arc<dyn Store>, OpenStoreError> {
    retrying(
        within,
        "store",
        || open_store(url),
        |error| matches!(error, OpenStoreError::Url(_)),
    )
    .await
}

/// Runs `attempt` until it succeeds, fails for good, or `within` has passed.
async fn retrying<T, E, Fut>(
    within: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Fut,
    for_good: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    const FIRST_WAIT: Duration = Duration::from_millis(500);
    const LONGEST_WAIT: Duration = Duration::from_secs(10);
    // A bound beyond what an instant can hold means no bound.
    let give_up_at = tokio::time::Instant::now().checked_add(within);
    let mut wait = FIRST_WAIT;
    let mut number = 0_u32;
    loop {
        number += 1;
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let left = give_up_at.map_or(Duration::MAX, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
        });
        if for_good(&error) || left.is_zero() {
            return Err(error);
        }
        let wait_now = wait.min(left);
        tracing::warn!(attempt = number, wait = ?wait_now, %error, "cannot reach the {what} yet; trying again");
        tokio::time::sleep(wait_now).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

/// The store schemes this build can open.
pub const SUPPORTED_STORE_SCHEMES: &[&str] = &[
    "memory",
    #[cfg(feature = "sqlite")]
    "sqlite",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "postgres")]
    "postgresql",
];

/// The SQLite store: the embedded durable store, one file per service.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite {
    pub use choreo_sqlite::{
        rusqlite, SqliteConfig, SqliteError, SqliteExt, SqliteStore, SqliteTransaction, Synchronous,
    };
}

/// The PostgreSQL store: one database that several services, and several instances, share.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use choreo_postgres::{
        sqlx, PostgresConfig, PostgresExt, PostgresStore, PostgresTransaction,
    };
}

/// Opens the store named by `url`: `memory://` (or `memory://NAME`: one in-process store
/// per name, kept while the process lives), `sqlite://PATH` (the file is created if
/// missing) with the `sqlite` feature, or `postgres://user:pass@host:port/db` with the
/// `postgres` feature. The schema is created or migrated on open.
///
/// A bad URL, or one whose feature this build lacks, is a [`UrlError`]; a database
/// that cannot be opened or reached in time is an [`OpenStoreError::Open`] saying what was
/// expected. Passwords never appear in errors.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>, OpenStoreError> {
    let url = StoreUrl::parse(url)?;
    match url.scheme() {
        "memory" => Ok(shared_memory_store(url.rest())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(sqlite::SqliteStore::open(&url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(postgres::PostgresStore::open(&url).await?)),
        _ => Err(url.unsupported(SUPPORTED_STORE_SCHEMES).into()),
    }
}

/// The process-wide memory store called `name`.
fn shared_memory_store(name: &str) -> Arc<dyn Store> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};

    static SHARED: OnceLock<Mutex<HashMap<String, Arc<MemoryStore>>>> = OnceLock::new();
    let mut shared = SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let store = shared
        .entry(name.trim_end_matches('/').to_owned())
        .or_default();
    Arc::clone(store) as Arc<dyn Store>
}

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
//! See the README for a whole service, and `docs/` for the saga rules.
#![cfg_attr(docsrs, feature(doc_cfg))]
//!
//! # Feature flags
//!
//! The in-memory transport (`memory://`) is always compiled in. Broker transports come with
//! their own features as they land; [`connect`] names the ones a build lacks.
//!
//! - `kafka`: `kafka://` URLs, `choreo::kafka`, on rdkafka with a bundled librdkafka.
//! - `rabbitmq`: `amqp://` URLs, `choreo::rabbitmq`, on lapin.
//! - `otlp` (default): [`telemetry::init`], logs, traces and metrics set up from the standard
//!   `OTEL_*` variables with OTLP/HTTP export. Without it, `choreo::telemetry` holds the span
//!   attribute and metric names only, and any `tracing-opentelemetry` setup works.
//! - `testkit`: `choreo::testkit`, brokers for tests through testcontainers and the transport
//!   conformance suite.

pub use choreo_core::*;

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

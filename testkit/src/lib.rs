//! Test kit for choreo services and transports.
//!
//! - [`KafkaBroker`] and [`RabbitMqBroker`] start a real broker in a container through
//!   testcontainers and give the `kafka://` / `amqp://` URL to reach it. The images are the
//!   well-known public ones unless environment variables name others; a `*_URL` variable
//!   points the tests at a running broker instead. See [`KafkaBroker::start`].
//! - With the `postgres` feature, `PostgresServer` does the same for a PostgreSQL server,
//!   shared by the tests of a process, and gives each test a database of its own.
//! - [`conformance`] is the transport conformance suite: the behaviour every transport must
//!   have, written once and run against each.
//! - [`store_conformance`] is the store conformance suite, likewise for stores.
//! - [`faults`] wraps any transport and any store to inject faults on purpose, seeded:
//!   duplicated, delayed and dropped deliveries, lost acknowledgements, failed publishes and
//!   commits, outages, slow commits and handlers.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod broker;
pub mod conformance;
pub mod faults;
mod probe;
pub mod store_conformance;

#[cfg(feature = "postgres")]
pub use crate::broker::PostgresServer;
pub use crate::broker::{Broker, BrokerError, KafkaBroker, RabbitMqBroker};

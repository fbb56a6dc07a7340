//! Test kit for choreo services and transports.
//!
//! - [`KafkaBroker`] and [`RabbitMqBroker`] start a real broker in a container through
//!   testcontainers and give the `kafka://` / `amqp://` URL to reach it. The images are the
//!   well-known public ones unless environment variables name others; a `*_URL` variable
//!   points the tests at a running broker instead. See [`KafkaBroker::start`].
//! - [`conformance`] is the transport conformance suite: the behaviour every transport must
//!   have, written once and run against each.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod broker;
pub mod conformance;
mod probe;

pub use crate::broker::{Broker, BrokerError, KafkaBroker, RabbitMqBroker};

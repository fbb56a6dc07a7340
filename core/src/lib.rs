//! The core of choreo: the event envelope, the traits a service and a transport implement,
//! and the saga runtime. Depends on no broker client; adapters depend on it.
//!
//! Most users depend on the `choreo` crate, which re-exports all of this.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod clock;
mod compensation;
mod context;
pub mod control;
mod deadline;
pub mod envelope;
mod error;
mod event;
mod handler;
mod ids;
pub mod journal;
mod retry;
mod saga;
mod saga_data;
mod saga_log;
mod service;
pub mod store;
pub mod telemetry;
mod trace;
pub mod transport;
mod url;

pub use crate::clock::{Clock, SystemClock, TokioClock};
pub use crate::compensation::Compensation;
pub use crate::context::Context;
pub use crate::deadline::Deadline;
pub use crate::envelope::{Envelope, EnvelopeError, Headers, RawMessage, SagaKind};
pub use crate::error::{BoxError, ErrorKind, HandlerError};
pub use crate::event::{Emit, Event};
pub use crate::handler::{JoinHandler, Parts, Rejection, Step, StepHandler, StepResult};
pub use crate::ids::{EventId, SagaId};
pub use crate::journal::{AbortReason, SagaRecord, SagaStatus};
pub use crate::retry::RetryPolicy;
pub use crate::saga::{CompensationOrder, Saga, SagaAborted, SagaCompensated};
pub use crate::saga_data::{SagaData, SagaDataError};
pub use crate::saga_log::{NotEnded, NotSeen, SagaLog, SagaOutcome};
pub use crate::service::{
    BuildError, RunError, RunningService, SagaStart, SagaTransaction, Service, ServiceBuilder,
    ServiceOptions, StartError,
};
pub use crate::store::{
    MemoryStore, OpenStoreError, Store, StoreError, StoreTransaction, StoreUrl, TransactionGuard,
};
pub use crate::trace::{InvalidTraceparent, TraceContext};
pub use crate::transport::{Delivery, PublishError, Subscription, Transport, TransportError};
pub use crate::url::{ConnectError, TransportUrl, UrlError, UrlOf};

/// The attribute the [`Store`], [`StoreTransaction`], [`Transport`], [`Subscription`] and
/// [`Acknowledge`](transport::Acknowledge) traits are written with: put
/// `#[choreo::async_trait]` on an implementation of one; no dependency of your own needed.
pub use async_trait::async_trait;

/// What `#[derive(Emit)]` expands to refers to; not an API.
#[doc(hidden)]
pub mod __derive {
    pub use serde_json::value::RawValue;
    pub use serde_json::Error as JsonError;
}

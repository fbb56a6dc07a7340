//! Compensations: how a service undoes a step it completed.
//!
//! A compensation is registered for the event its step emitted and receives that event back,
//! as recorded in the journal, when the saga aborts. It must be idempotent: it is retried
//! after transient errors and may run again after a crash.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::context::Context;
use crate::error::HandlerError;
use crate::event::Event;
use crate::handler::{decode_data, BoxFuture};

/// The undo of the step that emitted `E`.
///
/// Implemented for every `async fn(E, Context) -> Result<(), HandlerError>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a compensation for `{E}`",
    label = "not a compensation",
    note = "a compensation is an `async fn(done: {E}, cx: choreo::Context) -> Result<(), choreo::HandlerError>`, where `{E}` is the event its step emitted"
)]
pub trait Compensation<E: Event>: Send + Sync + 'static {
    /// Undoes the step that emitted `done`.
    fn compensate(
        &self,
        done: E,
        cx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<F, Fut, E> Compensation<E> for F
where
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    E: Event,
{
    fn compensate(
        &self,
        done: E,
        cx: Context,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(done, cx)
    }
}

/// A compensation with its types erased.
pub(crate) trait ErasedCompensation: Send + Sync + 'static {
    fn call(&self, data: &RawValue, cx: Context) -> BoxFuture<Result<(), HandlerError>>;
}

pub(crate) fn erase_compensation<E: Event, C: Compensation<E>>(
    compensation: C,
) -> Arc<dyn ErasedCompensation> {
    Arc::new(TypedCompensation {
        compensation: Arc::new(compensation),
        event: PhantomData::<fn(E)>,
    })
}

struct TypedCompensation<C, E> {
    compensation: Arc<C>,
    event: PhantomData<fn(E)>,
}

impl<E: Event, C: Compensation<E>> ErasedCompensation for TypedCompensation<C, E> {
    fn call(&self, data: &RawValue, cx: Context) -> BoxFuture<Result<(), HandlerError>> {
        let done = decode_data::<E>(data);
        let compensation = Arc::clone(&self.compensation);
        Box::pin(async move { compensation.compensate(done?, cx).await })
    }
}

//! Steps: what a service does when a saga event reaches it.
//!
//! A step is usually a plain `async fn(Event, Context) -> StepResult<Out>`; a type with state
//! implements [`StepHandler`] itself.

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::context::Context;
use crate::error::HandlerError;
use crate::event::{Emit, Event};

/// What a step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<D> {
    /// The step did its work; `D` is published (if it is an event) and recorded for the
    /// compensation.
    Done(D),
    /// A business refusal: the saga aborts and every participant compensates.
    Reject(Rejection),
}

impl<D> Step<D> {
    /// The step succeeded and emits `output`.
    pub fn done(output: D) -> Self {
        Self::Done(output)
    }

    /// The step refuses; `reason` travels in the abort event.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(Rejection {
            reason: reason.into(),
        })
    }
}

/// A business refusal and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why the step refused, for people reading the saga's history.
    pub reason: String,
}

/// The return type of a step.
pub type StepResult<D> = Result<Step<D>, HandlerError>;

/// A step of a saga: handles event `E` and decides [`Step::Done`] or [`Step::Reject`].
///
/// Implemented for every `async fn(E, Context) -> StepResult<Out>`; implement it yourself for
/// a handler with state:
///
/// ```
/// use choreo_core::{Context, Event, Step, StepHandler, StepResult};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct OrderPlaced { amount_cents: u64 }
/// # impl Event for OrderPlaced { const TYPE: &'static str = "orders.OrderPlaced.v1"; }
/// # #[derive(Serialize, Deserialize)] struct CreditReserved { amount_cents: u64 }
/// # impl Event for CreditReserved { const TYPE: &'static str = "payments.CreditReserved.v1"; }
///
/// struct ReserveCredit { limit_cents: u64 }
///
/// impl StepHandler<OrderPlaced> for ReserveCredit {
///     type Output = CreditReserved;
///
///     async fn handle(&self, order: OrderPlaced, _cx: Context) -> StepResult<CreditReserved> {
///         if order.amount_cents > self.limit_cents {
///             return Ok(Step::reject("over the credit limit"));
///         }
///         Ok(Step::done(CreditReserved { amount_cents: order.amount_cents }))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a step handling `{E}`",
    label = "not a step",
    note = "a step is an `async fn(event: {E}, cx: choreo::Context) -> choreo::StepResult<Out>` where `Out` is an Event or `()`, or a type implementing `StepHandler<{E}>`"
)]
pub trait StepHandler<E: Event>: Send + Sync + 'static {
    /// What the step emits on success: an [`Event`] or `()`.
    type Output: Emit;

    /// Handles one event.
    fn handle(
        &self,
        event: E,
        cx: Context,
    ) -> impl Future<Output = StepResult<Self::Output>> + Send;
}

impl<F, Fut, E, D> StepHandler<E> for F
where
    F: Fn(E, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult<D>> + Send + 'static,
    E: Event,
    D: Emit,
{
    type Output = D;

    fn handle(&self, event: E, cx: Context) -> impl Future<Output = StepResult<D>> + Send {
        self(event, cx)
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A step's decision with its output already serialized.
pub(crate) enum StepOutcome {
    /// Done, with the type and data of the event emitted, if any.
    Done(Option<(&'static str, Box<RawValue>)>),
    Reject(Rejection),
}

/// A step with its types erased, as the runtime stores it.
pub(crate) trait ErasedStep: Send + Sync + 'static {
    /// The event types the step waits for: one, or the parts of a join.
    fn input_types(&self) -> &'static [&'static str];

    /// What metrics and dead-letter reasons call the step: its input type, or its parts'
    /// types joined with ` + `. Borrowed for a step, so that a metric costs no copy.
    fn label(&self) -> Cow<'static, str>;

    /// Every type of event the step may emit.
    fn output_types(&self) -> &'static [&'static str];

    /// Decodes `data` (one event per input type, in their order) and runs the step.
    fn call(&self, data: &[&RawValue], cx: Context)
        -> BoxFuture<Result<StepOutcome, HandlerError>>;
}

pub(crate) fn erase_step<E: Event, H: StepHandler<E>>(handler: H) -> Arc<dyn ErasedStep> {
    Arc::new(TypedStep {
        handler: Arc::new(handler),
        event: PhantomData::<fn(E)>,
    })
}

struct TypedStep<H, E> {
    handler: Arc<H>,
    event: PhantomData<fn(E)>,
}

impl<E: Event, H: StepHandler<E>> ErasedStep for TypedStep<H, E> {
    fn input_types(&self) -> &'static [&'static str] {
        std::slice::from_ref(&E::TYPE)
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(E::TYPE)
    }

    fn output_types(&self) -> &'static [&'static str] {
        H::Output::EMITTED_TYPES
    }

    fn call(
        &self,
        data: &[&RawValue],
        cx: Context,
    ) -> BoxFuture<Result<StepOutcome, HandlerError>> {
        let event = decode_data::<E>(data[0]);
        let handler = Arc::clone(&self.handler);
        Box::pin(async move { decided(handler.handle(event?, cx).await?) })
    }
}

/// A step's decision, its output serialized; an output its type does not declare is a
/// permanent error.
fn decided<D: Emit>(step: Step<D>) -> Result<StepOutcome, HandlerError> {
    match step {
        Step::Done(output) => match output.into_event() {
            Ok(Some((event_type, _))) if !D::EMITTED_TYPES.contains(&event_type) => {
                Err(HandlerError::permanent(format!(
                    "the step emitted `{event_type}`, which its output type does not list in `Emit::EMITTED_TYPES`"
                )))
            }
            Ok(event) => Ok(StepOutcome::Done(event)),
            Err(error) => Err(HandlerError::permanent(format!(
                "cannot serialize the step's output: {error}"
            ))),
        },
        Step::Reject(rejection) => Ok(StepOutcome::Reject(rejection)),
    }
}

/// The events a join waits for: a tuple of two to four [`Event`] types, all of one saga.
///
/// Implemented for those tuples only; a [`JoinHandler`] receives one value of each, in the
/// tuple's order, whatever order they arrived in.
pub trait Parts: Sized + Send + 'static + sealed::Tuple {
    /// The event types, in the tuple's order.
    const TYPES: &'static [&'static str];

    /// Decodes one event per type, in the tuple's order.
    #[doc(hidden)]
    fn decode(data: &[&RawValue]) -> Result<Self, HandlerError>;
}

mod sealed {
    /// Only tuples of events are [`Parts`](super::Parts).
    pub trait Tuple {}
}

macro_rules! parts_of_tuples {
    ($(($($part:ident $index:tt),+))*) => {$(
        impl<$($part: Event),+> sealed::Tuple for ($($part,)+) {}

        impl<$($part: Event),+> Parts for ($($part,)+) {
            const TYPES: &'static [&'static str] = &[$($part::TYPE),+];

            fn decode(data: &[&RawValue]) -> Result<Self, HandlerError> {
                Ok(($(decode_data::<$part>(data[$index])?,)+))
            }
        }
    )*};
}

parts_of_tuples! {
    (A 0, B 1)
    (A 0, B 1, C 2)
    (A 0, B 1, C 2, D 3)
}

/// A join: a step that runs once every event of `P` arrived for the saga (docs/concepts.md,
/// rule 10), registered with [`ServiceBuilder::join`](crate::ServiceBuilder::join).
///
/// Implemented for every `async fn((A, B, ..), Context) -> StepResult<Out>`:
///
/// ```
/// use choreo_core::{Context, Event, Step, StepResult};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct FlightBooked { price_cents: u64 }
/// # impl Event for FlightBooked { const TYPE: &'static str = "flights.FlightBooked.v1"; }
/// # #[derive(Serialize, Deserialize)] struct HotelBooked { price_cents: u64 }
/// # impl Event for HotelBooked { const TYPE: &'static str = "hotels.HotelBooked.v1"; }
/// # #[derive(Serialize, Deserialize)] struct PaymentCharged { amount_cents: u64 }
/// # impl Event for PaymentCharged { const TYPE: &'static str = "payments.PaymentCharged.v1"; }
///
/// async fn charge(
///     (flight, hotel): (FlightBooked, HotelBooked),
///     _cx: Context,
/// ) -> StepResult<PaymentCharged> {
///     Ok(Step::done(PaymentCharged { amount_cents: flight.price_cents + hotel.price_cents }))
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a join of `{P}`",
    label = "not a join",
    note = "a join is an `async fn(parts: (A, B, ..), cx: choreo::Context) -> choreo::StepResult<Out>` where `A`, `B`, .. are Events and `Out` is an Event or `()`, or a type implementing `JoinHandler<(A, B, ..)>`"
)]
pub trait JoinHandler<P: Parts>: Send + Sync + 'static {
    /// What the join emits on success: an [`Event`], an [`Emit`] enum, or `()`.
    type Output: Emit;

    /// Handles the saga's events of every type of `P`.
    fn handle(
        &self,
        parts: P,
        cx: Context,
    ) -> impl Future<Output = StepResult<Self::Output>> + Send;
}

impl<F, Fut, P, D> JoinHandler<P> for F
where
    F: Fn(P, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = StepResult<D>> + Send + 'static,
    P: Parts,
    D: Emit,
{
    type Output = D;

    fn handle(&self, parts: P, cx: Context) -> impl Future<Output = StepResult<D>> + Send {
        self(parts, cx)
    }
}

pub(crate) fn erase_join<P: Parts, H: JoinHandler<P>>(handler: H) -> Arc<dyn ErasedStep> {
    Arc::new(TypedJoin {
        handler: Arc::new(handler),
        label: P::TYPES.join(" + "),
        parts: PhantomData::<fn(P)>,
    })
}

struct TypedJoin<H, P> {
    handler: Arc<H>,
    label: String,
    parts: PhantomData<fn(P)>,
}

impl<P: Parts, H: JoinHandler<P>> ErasedStep for TypedJoin<H, P> {
    fn input_types(&self) -> &'static [&'static str] {
        P::TYPES
    }

    fn label(&self) -> Cow<'static, str> {
        Cow::Owned(self.label.clone())
    }

    fn output_types(&self) -> &'static [&'static str] {
        H::Output::EMITTED_TYPES
    }

    fn call(
        &self,
        data: &[&RawValue],
        cx: Context,
    ) -> BoxFuture<Result<StepOutcome, HandlerError>> {
        let parts = P::decode(data);
        let handler = Arc::clone(&self.handler);
        Box::pin(async move { decided(handler.handle(parts?, cx).await?) })
    }
}

/// Decodes event data into `E`; data that does not fit is a permanent error.
pub(crate) fn decode_data<E: Event>(data: &RawValue) -> Result<E, HandlerError> {
    serde_json::from_str(data.get()).map_err(|error| {
        HandlerError::permanent(format!("data is not a valid `{}`: {error}", E::TYPE))
    })
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::value::to_raw_value;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct A(u8);
    impl Event for A {
        const TYPE: &'static str = "test.A.v1";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct B(u8);
    impl Event for B {
        const TYPE: &'static str = "test.B.v1";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct C(u8);
    impl Event for C {
        const TYPE: &'static str = "test.C.v1";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct D(u8);
    impl Event for D {
        const TYPE: &'static str = "test.D.v1";
    }

    fn raw(values: &[u8]) -> Vec<Box<RawValue>> {
        values.iter().map(|v| to_raw_value(v).unwrap()).collect()
    }

    #[test]
    fn parts_list_and_decode_their_types_in_the_tuple_order() {
        assert_eq!(<(A, B)>::TYPES, ["test.A.v1", "test.B.v1"]);
        assert_eq!(
            <(A, B, C, D)>::TYPES,
            ["test.A.v1", "test.B.v1", "test.C.v1", "test.D.v1"]
        );
        let data = raw(&[1, 2, 3, 4]);
        let data: Vec<&RawValue> = data.iter().map(|d| &**d).collect();
        assert_eq!(<(A, B)>::decode(&data[..2]).unwrap(), (A(1), B(2)));
        assert_eq!(<(A, B, C)>::decode(&data[..3]).unwrap(), (A(1), B(2), C(3)));
        assert_eq!(
            <(A, B, C, D)>::decode(&data).unwrap(),
            (A(1), B(2), C(3), D(4))
        );
    }

    #[test]
    fn a_part_that_does_not_decode_is_a_permanent_error_naming_its_type() {
        let data = [to_raw_value(&1).unwrap(), to_raw_value(&"two").unwrap()];
        let data: Vec<&RawValue> = data.iter().map(|d| &**d).collect();
        let error = <(A, B)>::decode(&data).unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Permanent);
        assert!(error.to_string().contains("test.B.v1"), "{error}");
    }
}

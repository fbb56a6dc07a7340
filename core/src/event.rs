//! Typed events at the edges of a service; envelopes inside.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

/// A saga event: a serde type with a stable, versioned name. With the `choreo` crate,
/// `#[derive(Event)]` and `#[event(name = "payments.CreditReserved.v1")]` implement it; by
/// hand:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct CreditReserved { order_id: u64, amount_cents: u64 }
///
/// impl choreo_core::Event for CreditReserved {
///     const TYPE: &'static str = "payments.CreditReserved.v1";
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a choreo event",
    label = "this type has no stable event name",
    note = "implement `choreo::Event` for it: `impl Event for {Self} {{ const TYPE: &'static str = \"service.Name.v1\"; }}` (it must also be Serialize + Deserialize)"
)]
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`: stable across releases, e.g. `payments.CreditReserved.v1`.
    const TYPE: &'static str;
}

/// What a step can emit when it succeeds: one event, nothing (`()`), or one of several
/// events: an enum whose variants each hold one event, with `#[derive(choreo::Emit)]`
/// (each variant's event has its own consumers, its own compensation, and may be terminal).
///
/// Its constant has a name of its own, so that `MyEvent::TYPE` stays unambiguous where
/// both traits are in scope.
pub trait Emit: Send + 'static {
    /// Every event type the step may emit; empty if it emits none.
    const EMITTED_TYPES: &'static [&'static str];

    /// The emitted event's type and JSON data, if it emits one.
    fn into_event(self) -> Result<Option<(&'static str, Box<RawValue>)>, serde_json::Error>;
}

impl<E: Event> Emit for E {
    const EMITTED_TYPES: &'static [&'static str] = &[E::TYPE];

    fn into_event(self) -> Result<Option<(&'static str, Box<RawValue>)>, serde_json::Error> {
        serde_json::value::to_raw_value(&self).map(|data| Some((E::TYPE, data)))
    }
}

impl Emit for () {
    const EMITTED_TYPES: &'static [&'static str] = &[];

    fn into_event(self) -> Result<Option<(&'static str, Box<RawValue>)>, serde_json::Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{Emit, Event};

    #[derive(Serialize, Deserialize)]
    struct CreditReserved {
        order_id: u64,
    }

    impl Event for CreditReserved {
        const TYPE: &'static str = "payments.CreditReserved.v1";
    }

    #[test]
    fn an_event_type_is_unambiguous_with_both_traits_in_scope() {
        assert_eq!(CreditReserved::TYPE, "payments.CreditReserved.v1");
        assert_eq!(
            CreditReserved::EMITTED_TYPES,
            ["payments.CreditReserved.v1"]
        );
        assert!(<() as Emit>::EMITTED_TYPES.is_empty());
    }
}

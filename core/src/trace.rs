//! W3C trace context as carried by every event (`traceparent`, `tracestate`).

use std::fmt;

use uuid::Uuid;

/// The W3C trace context of an event. A saga is one trace: the start opens it and every event
/// the saga causes carries it on.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// The `traceparent` (`..parent_end`) and the `tracestate` after it, in one allocation,
    /// since every event holds one: `None` when neither is set.
    text: Option<Box<str>>,
    /// Where the `traceparent` ends: 0 when there is none (a valid one is 55 bytes or more).
    parent_end: u32,
    /// Whether a `tracestate` is set, which may be empty.
    has_state: bool,
}

/// A `traceparent` that is not of the W3C form `vv-<32 hex>-<16 hex>-<2 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a W3C traceparent (expected `00-<32 hex>-<16 hex>-<2 hex>`)")]
pub struct InvalidTraceparent;

impl TraceContext {
    /// A context with no trace.
    pub fn none() -> Self {
        Self::default()
    }

    /// A new trace with a fresh random trace id and span id, sampled.
    pub fn new_root() -> Self {
        let trace_id = Uuid::new_v4().as_u128();
        let span_id = (Uuid::new_v4().as_u128() as u64).max(1);
        let traceparent = format!("00-{trace_id:032x}-{span_id:016x}-01");
        Self {
            parent_end: length(&traceparent),
            text: Some(traceparent.into_boxed_str()),
            has_state: false,
        }
    }

    /// A context from wire values; the `traceparent` must be valid W3C.
    pub fn from_parts(
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> Result<Self, InvalidTraceparent> {
        match (traceparent, tracestate) {
            // The common case keeps the allocation it was given.
            (Some(parent), None) => {
                validate_traceparent(&parent)?;
                Ok(Self {
                    parent_end: length(&parent),
                    text: Some(parent.into_boxed_str()),
                    has_state: false,
                })
            }
            (parent, state) => Self::parse(parent.as_deref(), state.as_deref()),
        }
    }

    /// [`from_parts`](Self::from_parts) of borrowed values, as a message's headers hold them.
    pub(crate) fn parse(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Result<Self, InvalidTraceparent> {
        if let Some(value) = traceparent {
            validate_traceparent(value)?;
        }
        Ok(Self::of(traceparent, tracestate))
    }

    fn of(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let parent = traceparent.unwrap_or_default();
        let text = match (traceparent, tracestate) {
            (None, None) => None,
            (_, None) => Some(Box::from(parent)),
            (_, Some(state)) => Some([parent, state].concat().into_boxed_str()),
        };
        Self {
            text,
            parent_end: length(parent),
            has_state: tracestate.is_some(),
        }
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<&str> {
        let end = self.parent_end as usize;
        self.text
            .as_deref()
            .filter(|_| end > 0)
            .map(|text| &text[..end])
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        let start = self.parent_end as usize;
        self.text
            .as_deref()
            .filter(|_| self.has_state)
            .map(|text| &text[start..])
    }

    /// The 32-hex-digit trace id, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent().map(|value| &value[3..35])
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent())
            .field("tracestate", &self.tracestate())
            .finish()
    }
}

/// The length of a valid `traceparent`, which fits.
fn length(traceparent: &str) -> u32 {
    u32::try_from(traceparent.len()).unwrap_or(u32::MAX)
}

fn validate_traceparent(value: &str) -> Result<(), InvalidTraceparent> {
    let bytes = value.as_bytes();
    // Later versions may add fields; not four gigabytes of them.
    if u32::try_from(bytes.len()).is_err() {
        return Err(InvalidTraceparent);
    }
    let hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let well_formed = bytes.len() >= 55
        && hex(0..2)
        && bytes[2] == b'-'
        && hex(3..35)
        && bytes[35] == b'-'
        && hex(36..52)
        && bytes[52] == b'-'
        && hex(53..55)
        && (bytes.len() == 55 || (&value[0..2] != "00" && bytes[55] == b'-'));
    let all_zero = |range: std::ops::Range<usize>| bytes[range].iter().all(|b| *b == b'0');
    if !well_formed || &value[0..2] == "ff" || all_zero(3..35) || all_zero(36..52) {
        return Err(InvalidTraceparent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_root_is_valid_and_exposes_its_trace_id() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::from_parts(root.traceparent().map(str::to_owned), None).unwrap();
        assert_eq!(parsed.trace_id().unwrap().len(), 32);
        assert_eq!(parsed, root);
    }

    #[test]
    fn either_value_alone_or_both_read_back_as_given() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        for (traceparent, tracestate) in [
            (None, None),
            (Some(parent), None),
            (None, Some("vendor=1")),
            (None, Some("")),
            (Some(parent), Some("")),
            (Some(parent), Some("vendor=1,other=2")),
        ] {
            let context = TraceContext::from_parts(
                traceparent.map(str::to_owned),
                tracestate.map(str::to_owned),
            )
            .unwrap();
            assert_eq!(
                (context.traceparent(), context.tracestate()),
                (traceparent, tracestate)
            );
            assert_eq!(
                TraceContext::parse(traceparent, tracestate),
                Ok(context.clone())
            );
            assert_eq!(
                context.trace_id(),
                traceparent.map(|_| "0af7651916cd43dd8448eb211c80319c")
            );
        }
        assert_ne!(
            TraceContext::from_parts(None, Some(String::new())).unwrap(),
            TraceContext::none(),
            "an empty tracestate is still one"
        );
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0é",
        ] {
            assert_eq!(
                TraceContext::from_parts(Some(bad.into()), None),
                Err(InvalidTraceparent),
                "{bad}"
            );
        }
    }
}

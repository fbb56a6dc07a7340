//! W3C trace context as carried by every event (`traceparent`, `tracestate`).

use std::fmt;

use uuid::Uuid;

/// The W3C trace context of an event. A saga is one trace: the start opens it and every event
/// the saga causes carries it on.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
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
        Self {
            traceparent: Some(format!("00-{trace_id:032x}-{span_id:016x}-01")),
            tracestate: None,
        }
    }

    /// A context from wire values; the `traceparent` must be valid W3C.
    pub fn from_parts(
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> Result<Self, InvalidTraceparent> {
        if let Some(value) = &traceparent {
            validate_traceparent(value)?;
        }
        Ok(Self {
            traceparent,
            tracestate,
        })
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().map(|value| &value[3..35])
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("traceparent", &self.traceparent)
            .field("tracestate", &self.tracestate)
            .finish()
    }
}

fn validate_traceparent(value: &str) -> Result<(), InvalidTraceparent> {
    let bytes = value.as_bytes();
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
        let parsed = TraceContext::from_parts(root.traceparent.clone(), None).unwrap();
        assert_eq!(parsed.trace_id().unwrap().len(), 32);
        assert_eq!(parsed, root);
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

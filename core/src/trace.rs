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
        Self::of_span(trace_id, span_id, 1, None)
    }

    /// The context of span `span_id` of trace `trace_id`, with its W3C trace flags and
    /// `tracestate`: a version 00 `traceparent`, written without a formatter.
    pub(crate) fn of_span(
        trace_id: u128,
        span_id: u64,
        flags: u8,
        tracestate: Option<&str>,
    ) -> Self {
        let mut text = String::with_capacity(55 + tracestate.map_or(0, str::len));
        text.push_str("00-");
        push_hex(&mut text, trace_id, 32);
        text.push('-');
        push_hex(&mut text, span_id.into(), 16);
        text.push('-');
        push_hex(&mut text, flags.into(), 2);
        let parent_end = length(&text);
        text.push_str(tracestate.unwrap_or_default());
        Self {
            text: Some(text.into_boxed_str()),
            parent_end,
            has_state: tracestate.is_some(),
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

    /// The trace id, span id and trace flags the `traceparent` names, if any: what
    /// [`of_span`](Self::of_span) writes.
    pub(crate) fn ids(&self) -> Option<(u128, u64, u8)> {
        let parent = self.traceparent()?.as_bytes();
        // Valid, so lower-case hexadecimal digits at these places.
        let read = |range: std::ops::Range<usize>| {
            parent[range].iter().fold(0u128, |value, digit| {
                let digit = match digit {
                    b'0'..=b'9' => digit - b'0',
                    _ => digit - b'a' + 10,
                };
                value << 4 | u128::from(digit)
            })
        };
        Some((read(3..35), read(36..52) as u64, read(53..55) as u8))
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

/// Appends the lowest `digits` hexadecimal digits of `value`, most significant first, in
/// lower case.
fn push_hex(text: &mut String, value: u128, digits: u32) {
    for digit in (0..digits).rev() {
        let nibble = (value >> (digit * 4)) & 0xf;
        text.push(char::from(b"0123456789abcdef"[nibble as usize]));
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
    // Every byte is checked, without stopping at the first bad one: the compiler turns this
    // into a few vector instructions, where a check that stops early takes one step a byte.
    let hex = |range: std::ops::Range<usize>| {
        bytes[range].iter().fold(true, |all, b| {
            all & ((b.wrapping_sub(b'0') < 10) | (b.wrapping_sub(b'a') < 6))
        })
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
    fn a_span_s_ids_are_written_and_read_as_the_w3c_format_has_them() {
        let context = TraceContext::of_span(
            0x0af7651916cd43dd8448eb211c80319c,
            0x00ad6b7169203331,
            1,
            Some("vendor=1"),
        );
        assert_eq!(
            context.traceparent(),
            Some("00-0af7651916cd43dd8448eb211c80319c-00ad6b7169203331-01")
        );
        assert_eq!(context.tracestate(), Some("vendor=1"));
        let (trace_id, span_id) = (u128::MAX - 1, 0x10);
        let expected = format!("00-{trace_id:032x}-{span_id:016x}-00");
        let context = TraceContext::of_span(trace_id, span_id, 0, None);
        assert_eq!(context.traceparent(), Some(expected.as_str()));
        assert_eq!(context.tracestate(), None);
        validate_traceparent(&expected).unwrap();
        assert_eq!(context.ids(), Some((trace_id, span_id, 0)));
        let parsed = TraceContext::parse(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None,
        )
        .unwrap();
        assert_eq!(
            parsed.ids(),
            Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1))
        );
        assert_eq!(TraceContext::none().ids(), None);
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
        // The bytes either side of each range of hexadecimal digits.
        for byte in ['/', ':', '`', 'g'] {
            let bad = format!("00-0af7651916cd43dd8448eb211c8031{byte}c-b7ad6b7169203331-01");
            assert_eq!(
                TraceContext::from_parts(Some(bad.clone()), None),
                Err(InvalidTraceparent),
                "{bad}"
            );
        }
    }
}

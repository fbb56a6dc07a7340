//! Escaping of every dynamic text the pages and pictures show: one function for HTML and SVG
//! text and attribute values, one for the parts of a URL.

use std::fmt::Write as _;

/// `text` made safe inside HTML or SVG (XML) text and inside a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML; the pictures are XML.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `part` percent-encoded for a URL path segment or a query value: every byte but the
/// unreserved ones (RFC 3986) is encoded, so that an id can never leave its segment.
pub fn url_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for byte in part.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The link to a saga's page, percent-encoded (still to be escaped into an attribute).
pub(crate) fn saga_href(saga_id: &str) -> String {
    format!("/sagas/{}", url_part(saga_id))
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// The last segment of an event type without its version: `payments.CreditReserved.v1` →
/// `CreditReserved`.
pub fn short_type(event_type: &str) -> &str {
    let mut parts = event_type.rsplit('.');
    let last = parts.next().unwrap_or(event_type);
    let is_version = last.len() > 1
        && last.starts_with('v')
        && last[1..].bytes().all(|byte| byte.is_ascii_digit());
    match (is_version, parts.next()) {
        (true, Some(name)) if !name.is_empty() => name,
        _ => last,
    }
}

/// A short id of an event for people: the last 8 hexadecimal digits. The first ones of a
/// UUID v7 are its time, shared by every event of a saga.
pub fn short_id(id: &str) -> String {
    let digits: Vec<char> = id.chars().filter(|c| *c != '-').collect();
    digits[digits.len().saturating_sub(8)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_ampersands() {
        assert_eq!(
            escape(r#"<script>alert("x's")</script> & co"#),
            "&lt;script&gt;alert(&quot;x&#39;s&quot;)&lt;/script&gt; &amp; co"
        );
        assert_eq!(escape("plain text"), "plain text");
        assert_eq!(escape("a\u{1}b"), "a\u{fffd}b");
    }

    #[test]
    fn url_parts_stay_in_their_segment() {
        assert_eq!(url_part("0190-ab_c.d~"), "0190-ab_c.d~");
        assert_eq!(url_part("a/b?c=d&e f\"<"), "a%2Fb%3Fc%3Dd%26e%20f%22%3C");
        assert_eq!(url_part("é"), "%C3%A9");
        assert_eq!(saga_href("x/../y"), "/sagas/x%2F..%2Fy");
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 2), "hé…");
    }

    #[test]
    fn short_names() {
        assert_eq!(short_type("payments.CreditReserved.v1"), "CreditReserved");
        assert_eq!(short_type("choreo.SagaAborted.v12"), "SagaAborted");
        assert_eq!(short_type("Plain"), "Plain");
        assert_eq!(short_type("orders.version"), "version");
        assert_eq!(short_type("v1"), "v1");
        assert_eq!(short_id("0190b5c2-7e4a-7c3d-9f00-1234abcd5678"), "abcd5678");
        assert_eq!(short_id("e1"), "e1");
    }
}

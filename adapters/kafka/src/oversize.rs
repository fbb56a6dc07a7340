//! Dead letters too large for the producer or the broker: sent cut down to fit, their reason
//! and topic always kept, rather than lost or redelivered without end.

use std::borrow::Cow;

use choreo_core::transport::{DEAD_LETTER_ORIGINAL_SIZE_HEADER, DEAD_LETTER_TRUNCATED_HEADER};
use choreo_core::{Headers, RawMessage};

/// librdkafka's default `message.max.bytes`, below a Kafka broker's default limit on a
/// record batch (1 048 588 bytes).
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// What a record costs beyond its body and its headers' names and values, counted
/// generously (librdkafka counts at most 36 bytes for a record without a key).
const RECORD_OVERHEAD: usize = 512;

/// What a header costs beyond its name and value: two varint lengths, at most 5 bytes each.
const HEADER_OVERHEAD: usize = 10;

/// The prefix of the headers choreo adds to a dead letter, which a cut copy always keeps.
const OURS: &str = "choreo-dead-letter-";

/// At least the size librdkafka holds against `message.max.bytes` for a record without a
/// key, with `headers` and a body of `body` bytes.
pub(crate) fn wire_size(headers: &Headers, body: usize) -> usize {
    headers
        .iter()
        .fold(RECORD_OVERHEAD + body, |size, (name, value)| {
            size + name.len() + value.len() + HEADER_OVERHEAD
        })
}

/// `letter` if it fits in `max_bytes`; otherwise a copy that does: the letter's headers and
/// as much of its body as fits, or, if its headers alone do not fit, only the
/// `choreo-dead-letter-*` headers and as much of the body as fits then. A copy says what
/// was left out and the original body's size (`choreo-dead-letter-truncated`,
/// `choreo-dead-letter-original-size`).
pub(crate) fn fit(letter: &RawMessage, max_bytes: usize) -> Cow<'_, RawMessage> {
    if wire_size(&letter.headers, letter.body.len()) <= max_bytes {
        return Cow::Borrowed(letter);
    }
    let headers_fit = wire_size(&marked(letter, true), 0) <= max_bytes;
    let room = max_bytes.saturating_sub(wire_size(&marked(letter, headers_fit), 0));
    Cow::Owned(copy(letter, headers_fit, room))
}

/// The next smaller copy of `letter` to try when the broker refused `sent` as too large:
/// without a body, then also without the original message's headers; `None` once nothing
/// more can go.
pub(crate) fn smaller(letter: &RawMessage, sent: &RawMessage) -> Option<RawMessage> {
    let keeps_headers = |message: &RawMessage| {
        message
            .headers
            .iter()
            .any(|(name, _)| !name.starts_with(OURS))
    };
    if !sent.body.is_empty() {
        Some(copy(letter, keeps_headers(sent), 0))
    } else if keeps_headers(sent) {
        Some(copy(letter, false, 0))
    } else {
        None
    }
}

/// A copy of `letter` with the first `body` bytes of its body, its headers (all, or only
/// choreo's), and the headers saying what was cut.
fn copy(letter: &RawMessage, all_headers: bool, body: usize) -> RawMessage {
    RawMessage {
        headers: marked(letter, all_headers),
        body: letter.body[..body.min(letter.body.len())].to_vec(),
    }
}

/// The headers of a cut copy of `letter`.
fn marked(letter: &RawMessage, all_headers: bool) -> Headers {
    let mut headers: Headers = letter
        .headers
        .iter()
        .filter(|(name, _)| !is_mark(name) && (all_headers || name.starts_with(OURS)))
        .collect();
    let left_out: &[u8] = if all_headers {
        b"body"
    } else {
        b"body,headers"
    };
    headers.push(DEAD_LETTER_TRUNCATED_HEADER, left_out);
    headers.push(
        DEAD_LETTER_ORIGINAL_SIZE_HEADER,
        letter.body.len().to_string().as_bytes(),
    );
    headers
}

fn is_mark(name: &str) -> bool {
    name == DEAD_LETTER_TRUNCATED_HEADER || name == DEAD_LETTER_ORIGINAL_SIZE_HEADER
}

#[cfg(test)]
mod tests {
    use choreo_core::transport::{dead_letter_message, DEAD_LETTER_REASON_HEADER};

    use super::*;

    fn letter(headers: &[(&str, usize)], body: usize) -> RawMessage {
        let message = RawMessage {
            headers: headers
                .iter()
                .map(|(name, size)| (*name, vec![b'h'; *size]))
                .collect(),
            body: (0..body).map(|i| (i % 251) as u8).collect(),
        };
        dead_letter_message(
            message,
            "orders.saga",
            "malformed event: data is not valid JSON",
        )
    }

    fn header<'a>(message: &'a RawMessage, name: &str) -> Option<&'a str> {
        message
            .header(name)
            .map(|value| std::str::from_utf8(value).unwrap())
    }

    fn size(message: &RawMessage) -> usize {
        wire_size(&message.headers, message.body.len())
    }

    #[test]
    fn a_letter_that_fits_is_sent_as_it_is() {
        let letter = letter(&[("ce_id", 36), ("ce_type", 20)], 900_000);
        assert!(matches!(
            fit(&letter, DEFAULT_MAX_MESSAGE_BYTES),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_large_body_is_cut_to_fit_with_every_header_kept_and_the_cut_said() {
        let letter = letter(&[("ce_id", 36), ("ce_type", 20)], 10 * 1024 * 1024);
        let cut = fit(&letter, DEFAULT_MAX_MESSAGE_BYTES);
        assert!(size(&cut) <= DEFAULT_MAX_MESSAGE_BYTES);
        assert!(
            size(&cut) > DEFAULT_MAX_MESSAGE_BYTES - 100,
            "{}",
            size(&cut)
        );
        assert!(letter.body.starts_with(&cut.body));
        assert!(letter
            .headers
            .iter()
            .eq(cut.headers.iter().take(letter.headers.len())));
        assert_eq!(header(&cut, DEAD_LETTER_TRUNCATED_HEADER), Some("body"));
        assert_eq!(
            header(&cut, DEAD_LETTER_ORIGINAL_SIZE_HEADER),
            Some("10485760")
        );
        assert_eq!(
            header(&cut, DEAD_LETTER_REASON_HEADER),
            Some("malformed event: data is not valid JSON")
        );
        assert!(matches!(cut, Cow::Owned(_)));
    }

    #[test]
    fn headers_too_large_for_the_limit_are_left_out_but_the_reason_kept() {
        let letter = letter(&[("ce_id", 36), ("x-blob", 2_000_000)], 5_000);
        let cut = fit(&letter, DEFAULT_MAX_MESSAGE_BYTES);
        assert!(size(&cut) <= DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(
            cut.body, letter.body,
            "the body fits once the headers are out"
        );
        let names: Vec<_> = cut.headers.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                DEAD_LETTER_REASON_HEADER,
                "choreo-dead-letter-topic",
                DEAD_LETTER_TRUNCATED_HEADER,
                DEAD_LETTER_ORIGINAL_SIZE_HEADER
            ]
        );
        assert_eq!(
            header(&cut, DEAD_LETTER_TRUNCATED_HEADER),
            Some("body,headers")
        );
        assert_eq!(header(&cut, DEAD_LETTER_ORIGINAL_SIZE_HEADER), Some("5000"));
    }

    #[test]
    fn refused_copies_get_smaller_until_nothing_more_can_go() {
        let letter = letter(&[("ce_id", 36)], 3_000_000);
        let first = fit(&letter, DEFAULT_MAX_MESSAGE_BYTES).into_owned();
        let second = smaller(&letter, &first).unwrap();
        assert!(second.body.is_empty());
        assert_eq!(second.headers, first.headers);
        let third = smaller(&letter, &second).unwrap();
        assert!(third.body.is_empty());
        assert!(third.header("ce_id").is_none());
        assert_eq!(
            header(&third, DEAD_LETTER_REASON_HEADER),
            Some("malformed event: data is not valid JSON")
        );
        assert_eq!(
            header(&third, DEAD_LETTER_TRUNCATED_HEADER),
            Some("body,headers")
        );
        assert_eq!(
            header(&third, DEAD_LETTER_ORIGINAL_SIZE_HEADER),
            Some("3000000")
        );
        assert_eq!(smaller(&letter, &third), None);
        // A letter sent whole and refused by the broker goes on without its body.
        let small = self::letter(&[("ce_id", 36)], 10);
        let bodiless = smaller(&small, &small).unwrap();
        assert!(bodiless.body.is_empty() && bodiless.header("ce_id").is_some());
        assert_eq!(
            header(&bodiless, DEAD_LETTER_ORIGINAL_SIZE_HEADER),
            Some("10")
        );
    }
}

//! What each fuzz target checks, on any input: no panic, and the properties below. Shared by
//! the fuzz targets (`fuzz_targets/`) and by the test that replays the kept corpus
//! (`tests/fuzz_corpus.rs`), so a corpus entry that once failed stays checked by `cargo test`.

use choreo_core::{Envelope, RawMessage, SagaAborted, SagaCompensated, StoreUrl, TransportUrl};

/// A password planted in every URL checked: it must show nowhere.
const PLANTED: &str = "Pl4nted-s3cret";

/// Binary mode: the input read as a message (see [`message`]). What decodes encodes back,
/// in both modes, to the same event.
pub fn envelope_binary(input: &[u8]) {
    match Envelope::decode(&message(input)) {
        Ok(envelope) => round_trips(&envelope),
        Err(error) => drop(error.to_string()),
    }
}

/// Structured mode: the input as the JSON document. What decodes encodes back, in both
/// modes, to the same event.
pub fn envelope_structured(input: &[u8]) {
    match Envelope::from_json(input) {
        Ok(envelope) => round_trips(&envelope),
        Err(error) => drop(error.to_string()),
    }
}

/// A transport URL: parsed or refused, with a password planted in it that neither the
/// parsed URL's printed forms nor the error show.
pub fn transport_url(input: &[u8]) {
    never_shows_the_password(input, |url| match TransportUrl::parse(url) {
        Ok(parsed) => {
            let _ = (
                parsed.scheme(),
                parsed.host(),
                parsed.port(),
                parsed.hosts(),
            );
            let _ = (parsed.username(), parsed.password(), parsed.path());
            let _ = parsed.options();
            format!(
                "{} {parsed} {parsed:?} {} {}",
                parsed.redacted(),
                parsed.unsupported(&[]),
                parsed.invalid_option("option", "reason")
            )
        }
        Err(error) => format!("{error} {error:?}"),
    });
}

/// A store URL, as [`transport_url`] checks a transport's.
pub fn store_url(input: &[u8]) {
    never_shows_the_password(input, |url| match StoreUrl::parse(url) {
        Ok(parsed) => {
            let _ = (parsed.scheme(), parsed.rest(), parsed.as_str());
            format!(
                "{} {parsed} {parsed:?} {} {}",
                parsed.redacted(),
                parsed.unsupported(&[]),
                parsed.invalid("reason")
            )
        }
        Err(error) => format!("{error} {error:?}"),
    });
}

/// Runs `shown` (everything a parsed URL or its error prints) on the input as it is and with
/// [`PLANTED`] as its password, which must show in neither.
fn never_shows_the_password(input: &[u8], shown: impl Fn(&str) -> String) {
    let Some(text) = unplanted(input) else {
        return;
    };
    for url in [text.to_owned(), planted(text)] {
        let shown = shown(&url);
        assert!(
            !shown.contains(PLANTED),
            "{url:?} shows its password: {shown}"
        );
    }
}

/// The data of an abort and of an acknowledgement, as a participant reads them: what
/// decodes encodes back to the same value.
pub fn control_payloads(input: &[u8]) {
    if let Ok(aborted) = serde_json::from_slice::<SagaAborted>(input) {
        let again = serde_json::to_vec(&aborted).expect("an abort encodes");
        assert_eq!(
            serde_json::from_slice::<SagaAborted>(&again).ok(),
            Some(aborted)
        );
    }
    if let Ok(acknowledged) = serde_json::from_slice::<SagaCompensated>(input) {
        let again = serde_json::to_vec(&acknowledged).expect("an acknowledgement encodes");
        assert_eq!(
            serde_json::from_slice::<SagaCompensated>(&again).ok(),
            Some(acknowledged)
        );
    }
}

/// `input` as a message: header lines `name: value` (the value any bytes but a newline),
/// then an empty line, then the body. Input without an empty line is all headers.
pub fn message(input: &[u8]) -> RawMessage {
    let mut message = RawMessage::default();
    let mut rest = input;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &[][..]),
        };
        rest = after;
        if line.is_empty() {
            message.body = rest.to_vec();
            break;
        }
        let (name, value) = match line.iter().position(|&byte| byte == b':') {
            Some(colon) => (
                &line[..colon],
                line[colon + 1..]
                    .strip_prefix(b" ")
                    .unwrap_or(&line[colon + 1..]),
            ),
            None => (line, &[][..]),
        };
        message.headers.push(&String::from_utf8_lossy(name), value);
    }
    message
}

/// `message` written as [`message`] reads it back (header values without newlines).
pub fn write_message(message: &RawMessage) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in &message.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(&message.body);
    out
}

fn round_trips(envelope: &Envelope) {
    let binary = Envelope::decode(&envelope.to_binary()).expect("an event's binary form decodes");
    assert_eq!(&binary, envelope, "binary mode changed the event");
    let structured =
        Envelope::decode(&envelope.to_structured()).expect("an event's structured form decodes");
    assert_eq!(&structured, envelope, "structured mode changed the event");
}

/// `input` as text, unless it is not UTF-8 or holds [`PLANTED`] already.
fn unplanted(input: &[u8]) -> Option<&str> {
    std::str::from_utf8(input)
        .ok()
        .filter(|text| !text.contains(PLANTED))
}

/// `text` with [`PLANTED`] as its password: `scheme://user:PLANTED@rest`.
fn planted(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://user:{PLANTED}@{rest}"),
        None => format!("{text}://user:{PLANTED}@host"),
    }
}

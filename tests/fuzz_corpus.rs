//! The fuzz targets' kept corpus (`fuzz/corpus/<target>/`, grown by `cargo fuzz run`, see
//! docs/testing.md) replayed through the same checks the targets make: what the fuzzer
//! once found, and the seeds it started from, stay checked by every `cargo test`.

#[allow(unreachable_pub)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;
use std::time::{Duration, SystemTime};

use choreo::{Deadline, Envelope, EventId, SagaData, SagaId, SagaKind, TraceContext};
use serde_json::value::RawValue;

/// Runs `check` on every file of the target's corpus; there must be some.
fn replay(target: &str, check: fn(&[u8])) {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&input));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
        replayed += 1;
    }
    assert!(replayed > 0, "{} is empty", directory.display());
}

#[test]
fn the_binary_mode_corpus_decodes_or_is_refused_and_round_trips() {
    replay("envelope_binary", checks::envelope_binary);
}

#[test]
fn the_structured_mode_corpus_decodes_or_is_refused_and_round_trips() {
    replay("envelope_structured", checks::envelope_structured);
}

#[test]
fn the_transport_url_corpus_never_shows_a_password() {
    replay("transport_url", checks::transport_url);
}

#[test]
fn the_store_url_corpus_never_shows_a_password() {
    replay("store_url", checks::store_url);
}

#[test]
fn the_control_payload_corpus_round_trips() {
    replay("control_payloads", checks::control_payloads);
}

/// The binary target reads its input as headers and a body: an event's binary form,
/// written that way, reads back as the same message and decodes to the same event.
#[test]
fn an_event_written_as_fuzz_input_reads_back_as_the_same_message() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_796_000_000_123_456_789);
    let envelope = Envelope {
        id: EventId::new(),
        source: "payments".into(),
        event_type: "payments.CreditReserved.v1".into(),
        time: now,
        saga_id: SagaId::new(),
        causation_id: Some(EventId::new()),
        joined_causes: Vec::new(),
        deadline: Deadline::after(now, Duration::from_secs(30)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(r#"{"order_id":7}"#.into()).unwrap(),
        saga_data: SagaData::new().with("card_token", "tok_visa").unwrap(),
    };
    let message = envelope.to_binary();
    let input = checks::write_message(&message);
    assert_eq!(checks::message(&input), message);
    assert_eq!(
        Envelope::decode(&checks::message(&input)).unwrap(),
        envelope
    );
    checks::envelope_binary(&input);
}

use std::time::{Duration, SystemTime};

use super::*;

fn sample() -> Envelope {
    Envelope {
        id: EventId::new(),
        source: "payments".into(),
        event_type: "payments.CreditReserved.v1".into(),
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
        saga_id: SagaId::new(),
        causation_id: Some(EventId::new()),
        joined_causes: Vec::new(),
        deadline: Deadline::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_030)),
        kind: SagaKind::Step,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(r#"{"order_id":7,"amount_cents":1200}"#.into()).unwrap(),
        saga_data: Default::default(),
    }
}

fn without_header(mut message: RawMessage, name: &str) -> RawMessage {
    message.headers.retain(|key, _| key != name);
    message
}

fn with_header(mut message: RawMessage, name: &str, value: &[u8]) -> RawMessage {
    message.headers.retain(|key, _| key != name);
    message.headers.push(name, value);
    message
}

#[test]
fn binary_mode_round_trips_every_attribute() {
    let envelope = sample();
    let message = envelope.to_binary();
    assert_eq!(
        message.header("ce_sagaid"),
        Some(envelope.saga_id.to_string().as_bytes())
    );
    assert_eq!(message.header("content-type"), Some(JSON.as_bytes()));
    assert_eq!(message.body, br#"{"order_id":7,"amount_cents":1200}"#);
    assert_eq!(Envelope::decode(&message).unwrap(), envelope);
}

#[test]
fn binary_mode_writes_each_attribute_once_in_wire_order() {
    let mut envelope = sample();
    envelope.joined_causes = vec![EventId::new(), EventId::new()];
    envelope.saga_data = SagaData::from_json(r#"{"tenant":"acme"}"#).unwrap();
    let message = envelope.to_binary();
    let names: Vec<&str> = message.headers.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "content-type",
            "ce_sagaid",
            "ce_causationid",
            "ce_joinedcauses",
            "ce_sagadeadline",
            "ce_sagakind",
            "ce_traceparent",
            "ce_sagadata",
        ]
    );
    assert_eq!(
        message.header("ce_time"),
        Some(&b"2026-11-18T11:06:40.123Z"[..])
    );
    assert_eq!(Envelope::decode(&message).unwrap(), envelope);
}

#[test]
fn every_attribute_has_its_slot_and_its_header() {
    for (index, attribute) in Attribute::ALL.into_iter().enumerate() {
        assert_eq!(attribute as usize, index);
        assert_eq!(Attribute::named(attribute.name()), Some(attribute));
        let header = BINARY_HEADERS[index].1;
        assert!(
            header == format!("{HEADER_PREFIX}{}", attribute.name())
                || (attribute == Attribute::DataContentType && header == CONTENT_TYPE_HEADER)
        );
    }
}

#[test]
fn headers_keep_every_name_and_value_in_order_however_they_are_stored() {
    let mut headers = Headers::new();
    headers.push("ce_id", b"1");
    headers.push("x-request-id", b"\xff\x00");
    headers.push("CE_ID", b"2");
    headers.push("ce_id", b"");
    assert_eq!(headers.len(), 4);
    assert_eq!(
        headers.iter().collect::<Vec<_>>(),
        [
            ("ce_id", &b"1"[..]),
            ("x-request-id", &b"\xff\x00"[..]),
            ("CE_ID", &b"2"[..]),
            ("ce_id", &b""[..]),
        ]
    );
    let mut both_ends = headers.iter();
    assert_eq!(both_ends.next_back(), Some(("ce_id", &b""[..])));
    assert_eq!(both_ends.next(), Some(("ce_id", &b"1"[..])));
    assert_eq!(both_ends.len(), 2);
    assert_eq!(both_ends.next_back(), Some(("CE_ID", &b"2"[..])));
    assert_eq!(
        both_ends.next_back(),
        Some(("x-request-id", &b"\xff\x00"[..]))
    );
    assert_eq!((both_ends.next(), both_ends.next_back()), (None, None));
    assert_eq!(headers.get("X-Request-Id"), Some(&b"\xff\x00"[..]));
    assert_eq!(headers.get("ce_ID"), Some(&b"1"[..]));
    assert_eq!(headers.get("ce_type"), None);

    headers.retain(|name, _| name != "ce_id");
    assert_eq!(
        headers,
        Headers::from([("x-request-id", &b"\xff\x00"[..]), ("CE_ID", b"2")])
    );
    assert_ne!(
        headers,
        Headers::from([("x-request-id", "\u{ff}"), ("CE_ID", "2")])
    );
}

#[test]
fn structured_mode_round_trips_every_attribute() {
    let envelope = sample();
    let message = envelope.to_structured();
    let document: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
    assert_eq!(document["sagakind"], "step");
    assert_eq!(document["data"]["order_id"], 7);
    assert_eq!(Envelope::decode(&message).unwrap(), envelope);
}

#[test]
fn an_event_without_causation_or_trace_round_trips() {
    let envelope = Envelope {
        causation_id: None,
        joined_causes: Vec::new(),
        trace: TraceContext::none(),
        kind: SagaKind::Start,
        ..sample()
    };
    assert_eq!(Envelope::decode(&envelope.to_binary()).unwrap(), envelope);
    assert_eq!(
        Envelope::decode(&envelope.to_structured()).unwrap(),
        envelope
    );
}

#[test]
fn saga_data_travels_as_the_sagadata_attribute_in_both_modes() {
    let envelope = Envelope {
        saga_data: SagaData::new().with("card_token", "tok_42").unwrap(),
        ..sample()
    };
    let binary = envelope.to_binary();
    assert_eq!(
        binary.header("ce_sagadata"),
        Some(br#"{"card_token":"tok_42"}"#.as_slice())
    );
    assert_eq!(Envelope::decode(&binary).unwrap(), envelope);
    let structured = envelope.to_structured();
    let document: serde_json::Value = serde_json::from_slice(&structured.body).unwrap();
    assert_eq!(document["sagadata"], r#"{"card_token":"tok_42"}"#);
    assert_eq!(Envelope::decode(&structured).unwrap(), envelope);

    // None set: not on the wire.
    assert_eq!(sample().to_binary().header("ce_sagadata"), None);
}

#[test]
fn saga_data_that_is_not_a_small_json_object_is_rejected() {
    let big = format!(r#"{{"note":"{}"}}"#, "x".repeat(SagaData::MAX_BYTES));
    for (value, reason) in [
        (
            "[1, 2]".to_owned(),
            "saga data is not a JSON object: an array",
        ),
        (
            big,
            "saga data of 4107 bytes is larger than the 4096 bytes it may take",
        ),
    ] {
        let message = with_header(sample().to_binary(), "ce_sagadata", value.as_bytes());
        assert_eq!(
            Envelope::decode(&message),
            Err(EnvelopeError::InvalidAttribute {
                name: "sagadata",
                reason: reason.into()
            })
        );
    }
}

#[test]
fn serde_uses_the_structured_document() {
    let envelope = sample();
    let json = serde_json::to_string(&envelope).unwrap();
    assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), envelope);
}

#[test]
fn every_missing_required_attribute_is_named() {
    for name in [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "sagaid",
        "sagadeadline",
        "sagakind",
    ] {
        let message = without_header(sample().to_binary(), &format!("ce_{name}"));
        assert_eq!(
            Envelope::decode(&message),
            Err(EnvelopeError::MissingAttribute(match name {
                "specversion" => "specversion",
                "id" => "id",
                "source" => "source",
                "type" => "type",
                "time" => "time",
                "sagaid" => "sagaid",
                "sagadeadline" => "sagadeadline",
                _ => "sagakind",
            })),
            "{name}"
        );
    }
}

#[test]
fn invalid_attribute_values_are_typed_errors() {
    let cases: [(&str, &[u8], &str); 8] = [
        ("ce_id", b"not-a-uuid", "id"),
        ("ce_sagaid", b"42", "sagaid"),
        ("ce_causationid", b"", "causationid"),
        ("ce_time", b"yesterday", "time"),
        ("ce_sagadeadline", b"2026-11-22 10:00", "sagadeadline"),
        ("ce_sagakind", b"retry", "sagakind"),
        ("ce_traceparent", b"00-xyz", "traceparent"),
        ("ce_source", b"", "source"),
    ];
    for (header, value, attribute) in cases {
        let message = with_header(sample().to_binary(), header, value);
        match Envelope::decode(&message) {
            Err(EnvelopeError::InvalidAttribute { name, .. }) => assert_eq!(name, attribute),
            other => panic!("{header}: expected invalid attribute, got {other:?}"),
        }
    }
}

#[test]
fn non_utf8_headers_wrong_versions_and_content_types_are_rejected() {
    let message = with_header(sample().to_binary(), "ce_type", &[0xff, 0xfe]);
    assert!(matches!(
        Envelope::decode(&message),
        Err(EnvelopeError::InvalidAttribute { name: "type", .. })
    ));
    // Other `ce_` headers are named as the attribute they spell in any case, or as an
    // extension.
    for (header, name) in [
        ("ce_SagaKind", "sagakind"),
        ("ce_data", "data"),
        ("ce_region", "extension"),
    ] {
        let mut message = sample().to_binary();
        message.headers.push(header, &[0xff]);
        assert_eq!(
            Envelope::decode(&message),
            Err(EnvelopeError::InvalidAttribute {
                name,
                reason: "not UTF-8".into()
            }),
            "{header}"
        );
    }

    let message = with_header(sample().to_binary(), "ce_specversion", b"0.3");
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::UnsupportedSpecVersion("0.3".into()))
    );

    let message = with_header(sample().to_binary(), "content-type", b"application/xml");
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::UnsupportedContentType(
            "application/xml".into()
        ))
    );

    let message = with_header(
        sample().to_binary(),
        "content-type",
        b"application/json; charset=utf-8",
    );
    assert!(Envelope::decode(&message).is_ok());
}

#[test]
fn duplicate_attributes_are_rejected() {
    let mut message = sample().to_binary();
    message
        .headers
        .push("ce_sagaid", SagaId::new().to_string().as_bytes());
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::DuplicateAttribute("sagaid".into()))
    );
}

#[test]
fn the_content_type_is_read_from_either_header_and_must_agree() {
    let binary = without_header(sample().to_binary(), "content-type");
    let message = with_header(binary.clone(), "ce_datacontenttype", b"application/xml");
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::UnsupportedContentType(
            "application/xml".into()
        ))
    );
    let mut message = with_header(binary.clone(), "Content-Type", b"application/json");
    assert!(Envelope::decode(&message).is_ok());
    message.headers.push("ce_datacontenttype", b"text/plain");
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::DuplicateAttribute("datacontenttype".into()))
    );
    // The first `content-type` header counts, and it must be text.
    let mut message = with_header(binary.clone(), "content-type", &[0xff]);
    message.headers.push("content-type", b"application/json");
    assert!(matches!(
        Envelope::decode(&message),
        Err(EnvelopeError::InvalidAttribute {
            name: "datacontenttype",
            ..
        })
    ));
}

#[test]
fn extension_attributes_are_ignored_but_not_twice() {
    let envelope = sample();
    let mut message = envelope.to_binary();
    message.headers.push("ce_region", b"eu");
    message.headers.push("x-ce_sagaid", b"not an attribute");
    assert_eq!(Envelope::decode(&message).unwrap(), envelope);
    message.headers.push("ce_region", b"us");
    assert_eq!(
        Envelope::decode(&message),
        Err(EnvelopeError::DuplicateAttribute("region".into()))
    );
}

#[test]
fn a_structured_message_is_read_from_its_body_whatever_its_other_headers_say() {
    let envelope = sample();
    let mut message = envelope.to_structured();
    message.headers.push("ce_sagaid", b"not a UUID");
    message.headers.push("ce_sagaid", &[0xff]);
    assert_eq!(Envelope::decode(&message).unwrap(), envelope);
}

#[test]
fn an_empty_value_is_text_even_between_the_bytes_of_one_character() {
    // The bytes of "€" (E2 82 AC) are split by an empty value, which stores nothing: the
    // buffer as a whole is text, and the empty value lies inside one character of it.
    let mut message = sample().to_binary();
    message.headers.push("x-other", &[0xe2, 0x82]);
    message.headers.push("ce_tracestate", b"");
    message.headers.push("", &[0xac]);
    let texts: Vec<_> = message.headers.texts().map(|(_, _, text)| text).collect();
    assert_eq!(texts[texts.len() - 3..], [None, Some(""), None]);
    assert!(Envelope::decode(&message).is_ok());
}

#[test]
fn a_body_that_is_not_json_is_rejected() {
    let mut message = sample().to_binary();
    message.body = b"{\"order_id\": 7".to_vec();
    assert!(matches!(
        Envelope::decode(&message),
        Err(EnvelopeError::InvalidData(_))
    ));

    message.body.clear();
    assert!(matches!(
        Envelope::decode(&message),
        Err(EnvelopeError::InvalidData(_))
    ));
}

#[test]
fn a_message_without_cloudevents_attributes_is_not_a_cloudevent() {
    for headers in [
        Headers::new(),
        Headers::from([("content-type", "text/plain")]),
        Headers::from([("x-trace", "1")]),
    ] {
        let message = RawMessage {
            headers,
            body: b"hello".to_vec(),
        };
        assert_eq!(
            Envelope::decode(&message),
            Err(EnvelopeError::NotACloudEvent)
        );
    }
}

#[test]
fn malformed_structured_documents_are_rejected() {
    let structured = |body: &str| RawMessage {
        headers: Headers::from([("content-type", STRUCTURED_CONTENT_TYPE)]),
        body: body.as_bytes().to_vec(),
    };
    assert!(matches!(
        Envelope::decode(&structured("[1, 2]")),
        Err(EnvelopeError::InvalidStructured(_))
    ));
    assert!(matches!(
        Envelope::decode(&structured("not json")),
        Err(EnvelopeError::InvalidStructured(_))
    ));

    let mut document: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
    document["sagaid"] = serde_json::json!(12);
    assert!(matches!(
        Envelope::decode(&structured(&document.to_string())),
        Err(EnvelopeError::InvalidAttribute { name: "sagaid", .. })
    ));

    document.as_object_mut().unwrap().remove("data");
    assert_eq!(
        Envelope::decode(&structured(&document.to_string())),
        Err(EnvelopeError::MissingAttribute("data"))
    );
}

proptest::proptest! {
    /// Values checked all at once read as text exactly when each alone is UTF-8, however
    /// multi-byte characters fall across them.
    #[test]
    fn header_values_are_text_exactly_when_each_is_utf8(
        headers in proptest::collection::vec((
            proptest::sample::select(vec!["ce_id", "content-type", "ce_x", ""]),
            proptest::collection::vec(proptest::sample::select(vec![b'a', 0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xff]), 0..6),
        ), 0..6),
    ) {
        // Choreo's own names and the empty name store no bytes, so values lie side by side.
        let collected: Headers = headers.iter().map(|(name, value)| (name, value)).collect();
        let texts: Vec<Option<&str>> = collected.texts().map(|(_, _, text)| text).collect();
        let each: Vec<Option<&str>> = headers.iter().map(|(_, value)| std::str::from_utf8(value).ok()).collect();
        proptest::prop_assert_eq!(texts, each);
    }

    /// Decoding is total: no input panics.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        headers in proptest::collection::vec(("(ce_)?[a-z]{0,12}|content-type", proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..12),
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
    ) {
        let headers: Headers = headers.into_iter().collect();
        let _ = Envelope::decode(&RawMessage { headers: headers.clone(), body: body.clone() });
        let mut structured = headers;
        structured.push("content-type", STRUCTURED_CONTENT_TYPE.as_bytes());
        let _ = Envelope::decode(&RawMessage { headers: structured, body });
    }

    /// Mutating one header of a valid event yields the event or a typed error, never a panic.
    #[test]
    fn mutating_a_valid_event_never_panics(index in 0usize..12, value in ".{0,64}") {
        let mut message = sample().to_binary();
        let slot = index % message.headers.len();
        message.headers = message
            .headers
            .iter()
            .enumerate()
            .map(|(at, (name, old))| (name, if at == slot { value.as_bytes() } else { old }))
            .collect();
        let _ = Envelope::decode(&message);
    }
}

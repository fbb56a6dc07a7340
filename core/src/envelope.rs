//! The wire format: every message is a CloudEvents 1.0 event with choreo's saga extensions
//! (docs/wire-format.md), in binary mode (attributes in headers, `data` as the body) or
//! structured mode (one JSON document).
//!
//! Decoding is strict and total: every malformed input is an [`EnvelopeError`], never a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::deadline::{parse_rfc3339, write_rfc3339, Deadline, TIMESTAMP_MAX};
use crate::ids::{EventId, SagaId};
use crate::saga_data::SagaData;
use crate::trace::TraceContext;

pub mod headers;

pub use self::headers::Headers;

/// The CloudEvents version choreo speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The only `datacontenttype` choreo produces and accepts.
pub const JSON: &str = "application/json";
/// The content type that marks a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Header prefix of CloudEvents attributes in binary mode (the Kafka binding's, also used on
/// AMQP by choreo).
pub const HEADER_PREFIX: &str = "ce_";
/// The header that carries the content type in binary and structured mode.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// What an event is to its saga (`sagakind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaKind {
    /// The initiating event of a saga.
    Start,
    /// An event a step emitted.
    Step,
    /// A terminal event: the saga completed.
    Complete,
    /// The saga is aborted; every participant compensates.
    Abort,
    /// A participant's acknowledgement that it compensated its steps.
    Compensated,
}

impl SagaKind {
    /// The wire value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Step => "step",
            Self::Complete => "complete",
            Self::Abort => "abort",
            Self::Compensated => "compensated",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "start" => Self::Start,
            "step" => Self::Step,
            "complete" => Self::Complete,
            "abort" => Self::Abort,
            "compensated" => Self::Compensated,
            _ => return None,
        })
    }
}

impl fmt::Display for SagaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event with everything a saga needs to travel with it.
#[derive(Clone)]
pub struct Envelope {
    /// CloudEvents `id` (UUID v7).
    pub id: EventId,
    /// CloudEvents `source`: the emitting service.
    pub source: String,
    /// CloudEvents `type`: the stable event name, e.g. `payments.CreditReserved.v1`.
    pub event_type: String,
    /// CloudEvents `time`: when the event was emitted.
    pub time: SystemTime,
    /// `sagaid`: the saga this event belongs to.
    pub saga_id: SagaId,
    /// `causationid`: the id of the event whose handling produced this one (none for a start).
    pub causation_id: Option<EventId>,
    /// `joinedcauses`: of a join's output, the other events the join ran with (the last
    /// one is `causation_id`); empty otherwise, and then not on the wire.
    pub joined_causes: Vec<EventId>,
    /// `sagadeadline`: when the saga must be aborted.
    pub deadline: Deadline,
    /// `sagakind`: what the event is to its saga.
    pub kind: SagaKind,
    /// `traceparent` / `tracestate`.
    pub trace: TraceContext,
    /// CloudEvents `data`, JSON.
    pub data: Box<RawValue>,
    /// `sagadata`: the values set when the saga started, which every event of the saga
    /// carries; empty when none were set (and then not on the wire).
    pub saga_data: SagaData,
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.source == other.source
            && self.event_type == other.event_type
            && self.time == other.time
            && self.saga_id == other.saga_id
            && self.causation_id == other.causation_id
            && self.joined_causes == other.joined_causes
            && self.deadline == other.deadline
            && self.kind == other.kind
            && self.trace == other.trace
            && self.data.get() == other.data.get()
            && self.saga_data == other.saga_data
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("type", &self.event_type)
            .field("source", &self.source)
            .field("saga_id", &self.saga_id)
            .field("causation_id", &self.causation_id)
            .field("joined_causes", &self.joined_causes)
            .field("kind", &self.kind)
            .field("deadline", &self.deadline)
            .field("data", &self.data.get())
            .field("saga_data", &self.saga_data)
            .finish_non_exhaustive()
    }
}

/// The attributes choreo knows, in the order it writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribute {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    DataContentType,
    SagaId,
    CausationId,
    JoinedCauses,
    SagaDeadline,
    SagaKind,
    TraceParent,
    TraceState,
    SagaData,
}

impl Attribute {
    /// Every one, in order: `Attribute::ALL[a as usize] == a`.
    const ALL: [Self; 14] = [
        Self::SpecVersion,
        Self::Id,
        Self::Source,
        Self::Type,
        Self::Time,
        Self::DataContentType,
        Self::SagaId,
        Self::CausationId,
        Self::JoinedCauses,
        Self::SagaDeadline,
        Self::SagaKind,
        Self::TraceParent,
        Self::TraceState,
        Self::SagaData,
    ];

    /// The attribute's CloudEvents name.
    fn name(self) -> &'static str {
        BINARY_HEADERS[self as usize].0
    }

    /// The attribute called `name`, when it is one choreo knows.
    fn named(name: &str) -> Option<Self> {
        let index = BINARY_HEADERS
            .iter()
            .position(|(known, _)| *known == name)?;
        Some(Self::ALL[index])
    }
}

/// What a header of a binary-mode message is to the decoder.
enum Header<'a> {
    /// `content-type`, in any case.
    ContentType,
    /// A `ce_` header of an attribute choreo knows.
    Attribute(Attribute),
    /// Another `ce_` header: an extension attribute, named without the prefix.
    Extension(&'a str),
}

/// Each attribute's name and binary-mode header, in [`Attribute`] order.
const BINARY_HEADERS: [(&str, &str); 14] = [
    ("specversion", "ce_specversion"),
    ("id", "ce_id"),
    ("source", "ce_source"),
    ("type", "ce_type"),
    ("time", "ce_time"),
    ("datacontenttype", CONTENT_TYPE_HEADER),
    ("sagaid", "ce_sagaid"),
    ("causationid", "ce_causationid"),
    ("joinedcauses", "ce_joinedcauses"),
    ("sagadeadline", "ce_sagadeadline"),
    ("sagakind", "ce_sagakind"),
    ("traceparent", "ce_traceparent"),
    ("tracestate", "ce_tracestate"),
    ("sagadata", "ce_sagadata"),
];

/// A message as transports carry it: headers and a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// Headers in arrival order.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
}

/// Why a message is not a valid choreo event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required attribute is absent.
    #[error("missing required attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute is present but its value is not valid.
    #[error("attribute `{name}` is invalid: {reason}")]
    InvalidAttribute {
        /// The attribute.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// An attribute appears twice.
    #[error("attribute `{0}` appears more than once")]
    DuplicateAttribute(String),
    /// `specversion` is not 1.0.
    #[error("unsupported CloudEvents specversion `{0}` (expected 1.0)")]
    UnsupportedSpecVersion(String),
    /// `datacontenttype` is not JSON.
    #[error("unsupported datacontenttype `{0}` (expected application/json)")]
    UnsupportedContentType(String),
    /// The data is not JSON.
    #[error("data is not valid JSON: {0}")]
    InvalidData(String),
    /// A structured-mode message is not a JSON object of CloudEvents attributes.
    #[error("structured event is not a valid JSON object: {0}")]
    InvalidStructured(String),
    /// The message has no CloudEvents attribute at all: something else was sent to the topic.
    #[error(
        "not a CloudEvent: no `ce_` headers, and the content type is not \
         `application/cloudevents+json`"
    )]
    NotACloudEvent,
}

impl Envelope {
    /// Binary mode: attributes as `ce_*` headers, `content-type` for the data, data as the body.
    pub fn to_binary(&self) -> RawMessage {
        let (count, bytes) = self.attributes_size();
        let mut headers = Headers::with_capacity(count, bytes);
        self.for_each_attribute(|attribute, value| {
            headers.push_known(attribute as usize, value.as_bytes());
        });
        RawMessage {
            headers,
            body: self.data.get().as_bytes().to_vec(),
        }
    }

    /// Structured mode: one JSON document holding every attribute and `data`.
    pub fn to_structured(&self) -> RawMessage {
        RawMessage {
            headers: Headers::from([(CONTENT_TYPE_HEADER, STRUCTURED_CONTENT_TYPE)]),
            body: self.to_json().into_bytes(),
        }
    }

    /// The structured-mode JSON document.
    pub fn to_json(&self) -> String {
        let mut json = String::with_capacity(320 + self.data.get().len());
        json.push('{');
        self.for_each_attribute(|attribute, value| {
            json.push('"');
            json.push_str(attribute.name());
            json.push_str("\":");
            push_json_string(&mut json, value);
            json.push(',');
        });
        // The raw data is spliced in as it is rather than parsed again.
        json.push_str("\"data\":");
        json.push_str(self.data.get());
        json.push('}');
        json
    }

    /// Decodes a message in either mode; structured mode is recognised by its content type.
    pub fn decode(message: &RawMessage) -> Result<Self, EnvelopeError> {
        // One pass over the headers: each known attribute has a slot, and the headers choreo
        // writes come with theirs, so most are placed without comparing a name.
        let mut slots: [Option<&str>; Attribute::ALL.len()] = [None; Attribute::ALL.len()];
        let mut extensions: Vec<&str> = Vec::new();
        let mut content_type: Option<Option<&str>> = None;
        let mut any_attribute = false;
        // The first fault among the attributes in header order, reported unless the content
        // type says structured mode, which reads the body alone. A `content-type` that is not
        // text is reported before it, as it decides the mode.
        let mut fault = None;
        for (name, known, text) in message.headers.texts() {
            let header = match known {
                // `BINARY_HEADERS` names `datacontenttype` by the `content-type` header.
                Some(index) if index == Attribute::DataContentType as usize => Header::ContentType,
                Some(index) => Header::Attribute(Attribute::ALL[index]),
                None if name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER) => Header::ContentType,
                None => match name.strip_prefix(HEADER_PREFIX) {
                    Some(name) => {
                        Attribute::named(name).map_or(Header::Extension(name), Header::Attribute)
                    }
                    None => continue,
                },
            };
            // The attribute's name, and its slot when it is one choreo knows.
            let (name, attribute) = match header {
                Header::ContentType => {
                    // The first `content-type` header is the one that counts.
                    content_type.get_or_insert(text);
                    continue;
                }
                Header::Attribute(attribute) => (attribute.name(), Some(attribute)),
                Header::Extension(name) => (name, None),
            };
            any_attribute = true;
            if fault.is_some() {
                continue;
            }
            let Some(text) = text else {
                fault = Some(not_utf8(
                    attribute.map_or_else(|| attribute_name(name), Attribute::name),
                ));
                continue;
            };
            let repeated = match attribute {
                Some(attribute) => slots[attribute as usize].replace(text).is_some(),
                None if extensions.contains(&name) => true,
                None => {
                    extensions.push(name);
                    false
                }
            };
            if repeated {
                fault = Some(EnvelopeError::DuplicateAttribute(name.to_owned()));
            }
        }
        let content_type = match content_type {
            Some(Some(text)) => Some(text),
            Some(None) => return Err(not_utf8("datacontenttype")),
            None => None,
        };
        if content_type.is_some_and(|value| value.starts_with(STRUCTURED_CONTENT_TYPE)) {
            return Self::from_json(&message.body);
        }
        if let Some(fault) = fault {
            return Err(fault);
        }
        if !any_attribute {
            return Err(EnvelopeError::NotACloudEvent);
        }
        if let Some(content_type) = content_type {
            let slot = &mut slots[Attribute::DataContentType as usize];
            match slot {
                Some(other) if *other != content_type => {
                    return Err(EnvelopeError::DuplicateAttribute("datacontenttype".into()));
                }
                Some(_) => {}
                None => *slot = Some(content_type),
            }
        }
        let data = parse_data(&message.body)?;
        Self::from_attributes(
            |attribute| Ok(slots[attribute as usize].map(Cow::Borrowed)),
            data,
        )
    }

    /// Decodes a structured-mode JSON document.
    pub fn from_json(document: &[u8]) -> Result<Self, EnvelopeError> {
        let fields: HashMap<String, Box<RawValue>> = serde_json::from_slice(document)
            .map_err(|error| EnvelopeError::InvalidStructured(error.to_string()))?;
        let data = fields
            .get("data")
            .cloned()
            .ok_or(EnvelopeError::MissingAttribute("data"))?;
        if fields.contains_key("data_base64") {
            return Err(EnvelopeError::UnsupportedContentType(
                "data_base64 (binary data)".into(),
            ));
        }
        Self::from_attributes(
            |attribute| match fields.get(attribute.name()) {
                None => Ok(None),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .map(|value| Some(Cow::Owned(value)))
                    .map_err(|_| EnvelopeError::InvalidAttribute {
                        name: attribute.name(),
                        reason: "expected a JSON string".into(),
                    }),
            },
            data,
        )
    }

    fn from_attributes<'a>(
        get: impl Fn(Attribute) -> Result<Option<Cow<'a, str>>, EnvelopeError>,
        data: Box<RawValue>,
    ) -> Result<Self, EnvelopeError> {
        let required = |attribute: Attribute| {
            get(attribute)?.ok_or(EnvelopeError::MissingAttribute(attribute.name()))
        };
        let invalid = |attribute: Attribute, reason: String| EnvelopeError::InvalidAttribute {
            name: attribute.name(),
            reason,
        };

        let spec_version = required(Attribute::SpecVersion)?;
        if spec_version != SPEC_VERSION {
            return Err(EnvelopeError::UnsupportedSpecVersion(
                spec_version.into_owned(),
            ));
        }
        if let Some(content_type) = get(Attribute::DataContentType)? {
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if !media_type.eq_ignore_ascii_case(JSON) {
                return Err(EnvelopeError::UnsupportedContentType(
                    content_type.into_owned(),
                ));
            }
        }
        let id = required(Attribute::Id)?
            .parse::<EventId>()
            .map_err(|error| invalid(Attribute::Id, error.to_string()))?;
        let source = non_empty(Attribute::Source, required(Attribute::Source)?)?;
        let event_type = non_empty(Attribute::Type, required(Attribute::Type)?)?;
        let time = parse_rfc3339(&required(Attribute::Time)?)
            .map_err(|error| invalid(Attribute::Time, error.to_string()))?;
        let saga_id = required(Attribute::SagaId)?
            .parse::<SagaId>()
            .map_err(|error| invalid(Attribute::SagaId, error.to_string()))?;
        let causation_id = match get(Attribute::CausationId)? {
            Some(value) => Some(
                value
                    .parse::<EventId>()
                    .map_err(|error| invalid(Attribute::CausationId, error.to_string()))?,
            ),
            None => None,
        };
        let joined_causes = match get(Attribute::JoinedCauses)? {
            Some(value) => value
                .split(',')
                .map(|id| id.trim().parse::<EventId>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| invalid(Attribute::JoinedCauses, error.to_string()))?,
            None => Vec::new(),
        };
        let deadline = required(Attribute::SagaDeadline)?
            .parse::<Deadline>()
            .map_err(|error| invalid(Attribute::SagaDeadline, error.to_string()))?;
        let kind_value = required(Attribute::SagaKind)?;
        let kind = SagaKind::parse(&kind_value).ok_or_else(|| {
            invalid(
                Attribute::SagaKind,
                format!("`{kind_value}` is not one of start, step, complete, abort, compensated"),
            )
        })?;
        let trace = TraceContext::parse(
            get(Attribute::TraceParent)?.as_deref(),
            get(Attribute::TraceState)?.as_deref(),
        )
        .map_err(|error| invalid(Attribute::TraceParent, error.to_string()))?;
        let saga_data = match get(Attribute::SagaData)? {
            Some(json) => SagaData::from_json(&json)
                .map_err(|error| invalid(Attribute::SagaData, error.to_string()))?,
            None => SagaData::default(),
        };

        Ok(Self {
            id,
            source,
            event_type,
            time,
            saga_id,
            causation_id,
            joined_causes,
            deadline,
            kind,
            trace,
            data,
            saga_data,
        })
    }

    /// Every attribute that goes on the wire, in wire order. The event's ids and timestamps
    /// are written in buffers on the stack, so that naming them allocates nothing (a join's
    /// list of causes is still joined into a `String`).
    fn for_each_attribute(&self, mut emit: impl FnMut(Attribute, &str)) {
        let mut id = [0; UUID_LENGTH];
        let mut time = [0; TIMESTAMP_MAX];
        emit(Attribute::SpecVersion, SPEC_VERSION);
        emit(
            Attribute::Id,
            self.id.as_uuid().hyphenated().encode_lower(&mut id),
        );
        emit(Attribute::Source, &self.source);
        emit(Attribute::Type, &self.event_type);
        emit(Attribute::Time, write_rfc3339(self.time, &mut time));
        emit(Attribute::DataContentType, JSON);
        emit(
            Attribute::SagaId,
            self.saga_id.as_uuid().hyphenated().encode_lower(&mut id),
        );
        if let Some(causation_id) = self.causation_id {
            emit(
                Attribute::CausationId,
                causation_id.as_uuid().hyphenated().encode_lower(&mut id),
            );
        }
        if !self.joined_causes.is_empty() {
            let ids: Vec<String> = self.joined_causes.iter().map(ToString::to_string).collect();
            emit(Attribute::JoinedCauses, &ids.join(","));
        }
        emit(
            Attribute::SagaDeadline,
            write_rfc3339(self.deadline.instant(), &mut time),
        );
        emit(Attribute::SagaKind, self.kind.as_str());
        if let Some(traceparent) = self.trace.traceparent() {
            emit(Attribute::TraceParent, traceparent);
        }
        if let Some(tracestate) = self.trace.tracestate() {
            emit(Attribute::TraceState, tracestate);
        }
        if !self.saga_data.is_empty() {
            emit(Attribute::SagaData, self.saga_data.as_json());
        }
    }

    /// How many attributes [`Self::for_each_attribute`] emits, and at most how many bytes
    /// their values take, so that binary mode allocates its headers once.
    fn attributes_size(&self) -> (usize, usize) {
        let optional = [
            self.causation_id.map(|_| UUID_LENGTH),
            (!self.joined_causes.is_empty()).then(|| self.joined_causes.len() * (UUID_LENGTH + 1)),
            self.trace.traceparent().map(str::len),
            self.trace.tracestate().map(str::len),
            (!self.saga_data.is_empty()).then(|| self.saga_data.as_json().len()),
        ];
        let required = SPEC_VERSION.len()
            + 2 * UUID_LENGTH
            + self.source.len()
            + self.event_type.len()
            + 2 * TIMESTAMP_MAX
            + JSON.len()
            + self.kind.as_str().len();
        (
            9 + optional.iter().flatten().count(),
            required + optional.iter().flatten().sum::<usize>(),
        )
    }
}

/// The envelope as one structured-mode JSON document, e.g. in journals and dead letters.
impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = self.to_json();
        let raw = RawValue::from_string(json).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_json(raw.get().as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// The length of a hyphenated UUID.
const UUID_LENGTH: usize = 36;

/// Appends `value` to `json` as a JSON string.
fn push_json_string(json: &mut String, value: &str) {
    // Attribute values are nearly always plain ASCII: ids, names, timestamps.
    if value
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\' && byte < 0x7f)
    {
        json.push('"');
        json.push_str(value);
        json.push('"');
    } else {
        // Serialising a string cannot fail.
        json.push_str(&serde_json::Value::from(value).to_string());
    }
}

/// The `'static` name of the attribute `name` names in any case (`data` included) when it is
/// one choreo knows, else `extension`, so errors can name it without allocating.
fn attribute_name(name: &str) -> &'static str {
    BINARY_HEADERS
        .iter()
        .map(|(attribute, _)| *attribute)
        .chain(["data"])
        .find(|known| known.eq_ignore_ascii_case(name))
        .unwrap_or("extension")
}

fn not_utf8(name: &'static str) -> EnvelopeError {
    EnvelopeError::InvalidAttribute {
        name,
        reason: "not UTF-8".into(),
    }
}

fn non_empty(attribute: Attribute, value: Cow<'_, str>) -> Result<String, EnvelopeError> {
    if value.is_empty() {
        return Err(EnvelopeError::InvalidAttribute {
            name: attribute.name(),
            reason: "must not be empty".into(),
        });
    }
    Ok(value.into_owned())
}

fn parse_data(body: &[u8]) -> Result<Box<RawValue>, EnvelopeError> {
    serde_json::from_slice::<Box<RawValue>>(body)
        .map_err(|error| EnvelopeError::InvalidData(error.to_string()))
}

#[cfg(test)]
mod tests;

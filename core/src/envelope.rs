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

use crate::deadline::{format_rfc3339, parse_rfc3339, Deadline};
use crate::ids::{EventId, SagaId};
use crate::saga_data::SagaData;
use crate::trace::TraceContext;

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

/// The binary mode's header for each attribute choreo writes, in the order it writes them.
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

/// `name`, as read from a broker, borrowed from choreo's own header names when it is one,
/// so that receiving an event allocates none of its header names.
pub fn header_name(name: &str) -> HeaderName {
    match BINARY_HEADERS.iter().find(|(_, header)| *header == name) {
        Some((_, header)) => Cow::Borrowed(*header),
        None => Cow::Owned(name.to_owned()),
    }
}

/// A header's name: choreo's own names are borrowed from constants, so naming a dozen
/// attributes per event allocates nothing; names read from a broker are owned.
pub type HeaderName = Cow<'static, str>;

/// A message as transports carry it: headers and a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// Headers in arrival order. Values are bytes because brokers allow any.
    pub headers: Vec<(HeaderName, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
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
        // Room for an event's usual attributes: the optional ones are rarely all there.
        let mut headers = Vec::with_capacity(12);
        self.for_each_attribute(|name, value| {
            let header = match BINARY_HEADERS.iter().find(|(known, _)| *known == name) {
                Some((_, header)) => Cow::Borrowed(*header),
                None => Cow::Owned(format!("{HEADER_PREFIX}{name}")),
            };
            headers.push((header, value.into_owned().into_bytes()));
        });
        RawMessage {
            headers,
            body: self.data.get().as_bytes().to_vec(),
        }
    }

    /// Structured mode: one JSON document holding every attribute and `data`.
    pub fn to_structured(&self) -> RawMessage {
        RawMessage {
            headers: vec![(
                CONTENT_TYPE_HEADER.into(),
                STRUCTURED_CONTENT_TYPE.as_bytes().to_vec(),
            )],
            body: self.to_json().into_bytes(),
        }
    }

    /// The structured-mode JSON document.
    pub fn to_json(&self) -> String {
        let mut json = String::with_capacity(320 + self.data.get().len());
        json.push('{');
        self.for_each_attribute(|name, value| {
            json.push('"');
            json.push_str(name);
            json.push_str("\":");
            push_json_string(&mut json, &value);
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
        let content_type = match message.header(CONTENT_TYPE_HEADER) {
            Some(value) => Some(utf8("datacontenttype", value)?),
            None => None,
        };
        if content_type.is_some_and(|value| value.starts_with(STRUCTURED_CONTENT_TYPE)) {
            return Self::from_json(&message.body);
        }

        // A dozen attributes: a linear scan beats hashing them.
        let mut attributes: Vec<(&str, &str)> = Vec::with_capacity(12);
        for (key, value) in &message.headers {
            let Some(name) = key.strip_prefix(HEADER_PREFIX) else {
                continue;
            };
            let value = std::str::from_utf8(value).map_err(|_| not_utf8(attribute_name(name)))?;
            if find(&attributes, name).is_some() {
                return Err(EnvelopeError::DuplicateAttribute(name.to_owned()));
            }
            attributes.push((name, value));
        }
        if attributes.is_empty() {
            return Err(EnvelopeError::NotACloudEvent);
        }
        if let Some(content_type) = content_type {
            match find(&attributes, "datacontenttype") {
                Some(other) if other != content_type => {
                    return Err(EnvelopeError::DuplicateAttribute("datacontenttype".into()));
                }
                Some(_) => {}
                None => attributes.push(("datacontenttype", content_type)),
            }
        }
        let data = parse_data(&message.body)?;
        Self::from_attributes(|name| Ok(find(&attributes, name).map(Cow::Borrowed)), data)
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
            |name| match fields.get(name) {
                None => Ok(None),
                Some(raw) => serde_json::from_str::<String>(raw.get())
                    .map(|value| Some(Cow::Owned(value)))
                    .map_err(|_| EnvelopeError::InvalidAttribute {
                        name: attribute_name(name),
                        reason: "expected a JSON string".into(),
                    }),
            },
            data,
        )
    }

    fn from_attributes<'a>(
        get: impl Fn(&'static str) -> Result<Option<Cow<'a, str>>, EnvelopeError>,
        data: Box<RawValue>,
    ) -> Result<Self, EnvelopeError> {
        let required = |name: &'static str| get(name)?.ok_or(EnvelopeError::MissingAttribute(name));
        let invalid =
            |name: &'static str, reason: String| EnvelopeError::InvalidAttribute { name, reason };

        let spec_version = required("specversion")?;
        if spec_version != SPEC_VERSION {
            return Err(EnvelopeError::UnsupportedSpecVersion(
                spec_version.into_owned(),
            ));
        }
        if let Some(content_type) = get("datacontenttype")? {
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if !media_type.eq_ignore_ascii_case(JSON) {
                return Err(EnvelopeError::UnsupportedContentType(
                    content_type.into_owned(),
                ));
            }
        }
        let id = required("id")?
            .parse::<EventId>()
            .map_err(|error| invalid("id", error.to_string()))?;
        let source = non_empty("source", required("source")?)?;
        let event_type = non_empty("type", required("type")?)?;
        let time = match get("time")? {
            Some(value) => {
                parse_rfc3339(&value).map_err(|error| invalid("time", error.to_string()))?
            }
            None => return Err(EnvelopeError::MissingAttribute("time")),
        };
        let saga_id = required("sagaid")?
            .parse::<SagaId>()
            .map_err(|error| invalid("sagaid", error.to_string()))?;
        let causation_id = match get("causationid")? {
            Some(value) => Some(
                value
                    .parse::<EventId>()
                    .map_err(|error| invalid("causationid", error.to_string()))?,
            ),
            None => None,
        };
        let joined_causes = match get("joinedcauses")? {
            Some(value) => value
                .split(',')
                .map(|id| id.trim().parse::<EventId>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| invalid("joinedcauses", error.to_string()))?,
            None => Vec::new(),
        };
        let deadline = required("sagadeadline")?
            .parse::<Deadline>()
            .map_err(|error| invalid("sagadeadline", error.to_string()))?;
        let kind_value = required("sagakind")?;
        let kind = SagaKind::parse(&kind_value).ok_or_else(|| {
            invalid(
                "sagakind",
                format!("`{kind_value}` is not one of start, step, complete, abort, compensated"),
            )
        })?;
        let trace = TraceContext::from_parts(
            get("traceparent")?.map(Cow::into_owned),
            get("tracestate")?.map(Cow::into_owned),
        )
        .map_err(|error| invalid("traceparent", error.to_string()))?;
        let saga_data = match get("sagadata")? {
            Some(json) => SagaData::from_json(&json)
                .map_err(|error| invalid("sagadata", error.to_string()))?,
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

    fn for_each_attribute(&self, mut emit: impl FnMut(&'static str, Cow<'_, str>)) {
        emit("specversion", Cow::Borrowed(SPEC_VERSION));
        emit("id", Cow::Owned(self.id.to_string()));
        emit("source", Cow::Borrowed(&self.source));
        emit("type", Cow::Borrowed(&self.event_type));
        emit("time", Cow::Owned(format_rfc3339(self.time)));
        emit("datacontenttype", Cow::Borrowed(JSON));
        emit("sagaid", Cow::Owned(self.saga_id.to_string()));
        if let Some(causation_id) = self.causation_id {
            emit("causationid", Cow::Owned(causation_id.to_string()));
        }
        if !self.joined_causes.is_empty() {
            let ids: Vec<String> = self.joined_causes.iter().map(ToString::to_string).collect();
            emit("joinedcauses", Cow::Owned(ids.join(",")));
        }
        emit("sagadeadline", Cow::Owned(self.deadline.to_rfc3339()));
        emit("sagakind", Cow::Borrowed(self.kind.as_str()));
        if let Some(traceparent) = self.trace.traceparent() {
            emit("traceparent", Cow::Borrowed(traceparent));
        }
        if let Some(tracestate) = self.trace.tracestate() {
            emit("tracestate", Cow::Borrowed(tracestate));
        }
        if !self.saga_data.is_empty() {
            emit("sagadata", Cow::Borrowed(self.saga_data.as_json()));
        }
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

const KNOWN_ATTRIBUTES: [&str; 15] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "sagaid",
    "causationid",
    "joinedcauses",
    "sagadeadline",
    "sagakind",
    "traceparent",
    "tracestate",
    "data",
    "sagadata",
];

/// The `'static` name of a known attribute, so errors can name it without allocating.
fn attribute_name(name: &str) -> &'static str {
    KNOWN_ATTRIBUTES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("extension")
}

fn utf8<'a>(name: &'static str, value: &'a [u8]) -> Result<&'a str, EnvelopeError> {
    std::str::from_utf8(value).map_err(|_| not_utf8(name))
}

/// Named only once it failed: finding the name scans the known ones, on every header.
fn not_utf8(name: &'static str) -> EnvelopeError {
    EnvelopeError::InvalidAttribute {
        name,
        reason: "not UTF-8".into(),
    }
}

fn non_empty(name: &'static str, value: Cow<'_, str>) -> Result<String, EnvelopeError> {
    if value.is_empty() {
        return Err(EnvelopeError::InvalidAttribute {
            name,
            reason: "must not be empty".into(),
        });
    }
    Ok(value.into_owned())
}

/// The value of attribute `name` among `attributes`.
fn find<'a>(attributes: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| *value)
}

fn parse_data(body: &[u8]) -> Result<Box<RawValue>, EnvelopeError> {
    serde_json::from_slice::<Box<RawValue>>(body)
        .map_err(|error| EnvelopeError::InvalidData(error.to_string()))
}

#[cfg(test)]
mod tests;

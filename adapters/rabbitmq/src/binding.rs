//! The CloudEvents RabbitMQ protocol binding, binary mode: each attribute is an AMQP header
//! `ce-<name>`, except `datacontenttype`, which is the message's `content_type` property; the
//! data is the body. This is what the CloudEvents SDKs' RabbitMQ bindings read and write.
//!
//! choreo 0.1 wrote the Kafka binding's names instead (`ce_<name>` and a `content-type`
//! header); they are still read, so that services upgraded one at a time keep understanding
//! each other (docs/wire-format.md says until when).

use choreo_core::envelope::{CONTENT_TYPE_HEADER, HEADER_PREFIX};
use choreo_core::{Headers, RawMessage};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header prefix of the RabbitMQ binding.
const AMQP_PREFIX: &str = "ce-";

/// `message`'s attributes as AMQP headers, and its content type for the `content_type`
/// property.
pub(crate) fn to_amqp(message: &RawMessage) -> (FieldTable, Option<ShortString>) {
    let mut headers = FieldTable::default();
    let mut content_type = None;
    for (name, value) in &message.headers {
        if name == CONTENT_TYPE_HEADER {
            content_type = Some(ShortString::from(String::from_utf8_lossy(value).as_ref()));
            continue;
        }
        let name = match name.strip_prefix(HEADER_PREFIX) {
            Some(attribute) => format!("{AMQP_PREFIX}{attribute}"),
            None => name.to_string(),
        };
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value.to_vec())),
        );
    }
    (headers, content_type)
}

/// A received message's headers as the envelope reads them, in either form: `ce-<name>`
/// headers are read as `ce_<name>`, and the `content_type` property as the `content-type`
/// header unless the message carries one. An attribute that comes in both forms is then a
/// repeated attribute, which the envelope refuses.
pub(crate) fn from_amqp(
    headers: Option<&FieldTable>,
    content_type: Option<&ShortString>,
) -> Headers {
    let table = headers.map(FieldTable::inner);
    // Room for an event's attributes: a dozen values of about 30 bytes, and renamed names.
    let mut read = Headers::with_capacity(table.map_or(0, |table| table.len()) + 1, 512);
    // Each `ce-<name>` is renamed in this one buffer.
    let mut renamed = String::new();
    for (name, value) in table.into_iter().flatten() {
        let other;
        let bytes = match value {
            AMQPValue::LongString(text) => text.as_bytes(),
            AMQPValue::ShortString(text) => text.as_str().as_bytes(),
            value => {
                other = format!("{value:?}");
                other.as_bytes()
            }
        };
        let name = name.as_str();
        match name.get(..AMQP_PREFIX.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(AMQP_PREFIX) => {
                renamed.clear();
                renamed.push_str(HEADER_PREFIX);
                renamed.push_str(&name[AMQP_PREFIX.len()..]);
                renamed.make_ascii_lowercase();
                read.push(&renamed, bytes);
            }
            _ => read.push(name, bytes),
        }
    }
    if let Some(content_type) = content_type {
        if !read.iter().any(|(name, _)| name == CONTENT_TYPE_HEADER) {
            read.push(CONTENT_TYPE_HEADER, content_type.as_str().as_bytes());
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> RawMessage {
        RawMessage {
            headers: Headers::from([
                ("ce_id", "0192"),
                ("ce_sagaid", "0193"),
                (CONTENT_TYPE_HEADER, "application/json"),
            ]),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn attributes_go_out_as_ce_dash_headers_and_the_content_type_as_the_property() {
        let (headers, content_type) = to_amqp(&message());
        let names: Vec<&str> = headers.inner().keys().map(ShortString::as_str).collect();
        assert_eq!(names, ["ce-id", "ce-sagaid"]);
        assert_eq!(
            content_type.as_ref().map(ShortString::as_str),
            Some("application/json")
        );
    }

    fn sorted(headers: &Headers) -> Vec<(&str, &[u8])> {
        let mut sorted: Vec<_> = headers.iter().collect();
        sorted.sort();
        sorted
    }

    #[test]
    fn both_the_binding_s_form_and_the_older_one_are_read_back() {
        let sent = message().headers;
        let (headers, content_type) = to_amqp(&message());
        let read = from_amqp(Some(&headers), content_type.as_ref());
        assert_eq!(sorted(&read), sorted(&sent));

        let mut older = FieldTable::default();
        for (name, value) in &sent {
            older.insert(
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value.to_vec())),
            );
        }
        let read = from_amqp(Some(&older), None);
        assert_eq!(sorted(&read), sorted(&sent));
    }
}

//! Saga data: values set when a saga starts that travel with every event of the saga
//! (docs/concepts.md, rule 2), so that no handler copies them from event to event.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

/// Named JSON values that travel with every event of a saga (the `sagadata` attribute) and
/// that every handler and compensation reads from its [`Context`](crate::Context).
///
/// ```
/// use choreo_core::SagaData;
///
/// let data = SagaData::new().with("card_token", "tok_42")?.with("vip", &true)?;
/// assert_eq!(data.get::<String>("card_token")?, Some("tok_42".to_owned()));
/// assert_eq!(data.get::<bool>("missing")?, None);
/// # Ok::<(), choreo_core::SagaDataError>(())
/// ```
///
/// It is carried as one JSON object of at most [`SagaData::MAX_BYTES`], since it travels
/// with every event: keep it to what later steps need (ids, tokens, options), not documents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SagaData {
    /// The JSON object, compact; `None` when empty.
    json: Option<Arc<str>>,
}

/// Why saga data cannot be set or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaDataError {
    /// The data, as JSON, is larger than [`SagaData::MAX_BYTES`].
    #[error("saga data of {bytes} bytes is larger than the {limit} bytes it may take")]
    TooLarge {
        /// Its size as JSON.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// A value does not convert to or from JSON as asked.
    #[error("saga data value `{key}`: {source}")]
    Value {
        /// The value's name.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// What was received is not a JSON object.
    #[error("saga data is not a JSON object: {0}")]
    NotAnObject(String),
}

impl SagaData {
    /// The most bytes the data may take as JSON.
    pub const MAX_BYTES: usize = 4096;

    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `value` under `key` (replacing any value of that name).
    pub fn with(self, key: &str, value: &(impl Serialize + ?Sized)) -> Result<Self, SagaDataError> {
        let value = serde_json::to_value(value).map_err(|source| SagaDataError::Value {
            key: key.to_owned(),
            source,
        })?;
        let mut object = self.object();
        object.insert(key.to_owned(), value);
        let json = Value::Object(object).to_string();
        Self::checked(json)
    }

    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SagaDataError> {
        let Some(value) = self.object().remove(key) else {
            return Ok(None);
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|source| SagaDataError::Value {
                key: key.to_owned(),
                source,
            })
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.json.is_none()
    }

    /// The JSON object, as carried in `sagadata`; `{}` when empty.
    pub fn as_json(&self) -> &str {
        self.json.as_deref().unwrap_or("{}")
    }

    /// Saga data from its JSON form, as received: a JSON object within the size limit.
    pub fn from_json(json: &str) -> Result<Self, SagaDataError> {
        match serde_json::from_str::<Value>(json) {
            // Compacted again, so that equal data compares equal however it was written.
            Ok(object @ Value::Object(_)) => Self::checked(object.to_string()),
            Ok(other) => Err(SagaDataError::NotAnObject(kind_of(&other).to_owned())),
            Err(error) => Err(SagaDataError::NotAnObject(error.to_string())),
        }
    }

    fn checked(json: String) -> Result<Self, SagaDataError> {
        if json.len() > Self::MAX_BYTES {
            return Err(SagaDataError::TooLarge {
                bytes: json.len(),
                limit: Self::MAX_BYTES,
            });
        }
        Ok(Self {
            json: (json != "{}").then(|| Arc::from(json)),
        })
    }

    fn object(&self) -> Map<String, Value> {
        self.json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl fmt::Debug for SagaData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_set_replaced_and_read_back() {
        let data = SagaData::new()
            .with("card_token", "tok_1")
            .unwrap()
            .with("card_token", "tok_2")
            .unwrap()
            .with("seats", &[1, 2])
            .unwrap();
        assert_eq!(data.as_json(), r#"{"card_token":"tok_2","seats":[1,2]}"#);
        assert_eq!(data.get::<Vec<u8>>("seats").unwrap(), Some(vec![1, 2]));
        assert!(matches!(
            data.get::<u64>("card_token"),
            Err(SagaDataError::Value { key, .. }) if key == "card_token"
        ));
        assert!(SagaData::new().is_empty());
        assert_eq!(SagaData::new().as_json(), "{}");
        assert_eq!(SagaData::from_json("{ }").unwrap(), SagaData::new());
        assert_eq!(
            SagaData::from_json(r#"{ "seats": [1, 2],  "card_token": "tok_2" }"#).unwrap(),
            data
        );
    }

    /// Every hop reads the data and writes it again: a number must come back as it went,
    /// not rounded differently once per service, however many digits its producer wrote.
    #[test]
    fn numbers_travel_every_hop_unchanged() {
        #[allow(clippy::excessive_precision)]
        let cases = [
            ("99333.4444444444444444", 99_333.444_444_444_444_444_4_f64),
            (
                "2222222222222222222222222222222222e80",
                2.222_222_222_222_222_222_222_222_222_222e113,
            ),
            ("0.1", 0.1),
        ];
        for (written, value) in cases {
            let mut data = SagaData::from_json(&format!(r#"{{"amount":{written}}}"#)).unwrap();
            for _ in 0..3 {
                assert_eq!(data.get::<f64>("amount").unwrap(), Some(value), "{written}");
                data = SagaData::from_json(data.as_json()).unwrap();
            }
        }
    }

    #[test]
    fn data_larger_than_the_limit_is_refused() {
        let big = "x".repeat(SagaData::MAX_BYTES);
        assert!(matches!(
            SagaData::new().with("note", &big),
            Err(SagaDataError::TooLarge {
                limit: SagaData::MAX_BYTES,
                ..
            })
        ));
        let received = format!(r#"{{"note":"{big}"}}"#);
        assert!(matches!(
            SagaData::from_json(&received),
            Err(SagaDataError::TooLarge { .. })
        ));
    }

    #[test]
    fn received_data_must_be_a_json_object() {
        assert!(matches!(
            SagaData::from_json("[1]"),
            Err(SagaDataError::NotAnObject(kind)) if kind == "an array"
        ));
        assert!(matches!(
            SagaData::from_json("{"),
            Err(SagaDataError::NotAnObject(_))
        ));
    }
}

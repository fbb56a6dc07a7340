//! Where the monitor keeps what it saw: every event of the topic and every dead letter, in a
//! SQLite file (the default) or a PostgreSQL database. Recording is idempotent (an event by
//! its id, a dead letter by its message, service and reason), so a redelivery after the
//! monitor's restart counts nothing twice.

#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use choreo_core::control::{DEAD_LETTER_SAGA_HEADER, DEAD_LETTER_SERVICE_HEADER};
use choreo_core::transport::{DEAD_LETTER_REASON_HEADER, DEAD_LETTER_TOPIC_HEADER};
use choreo_core::{Envelope, Headers, RawMessage};

use crate::error::MonitorError;

/// One event as recorded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    pub(crate) id: String,
    pub(crate) saga_id: String,
    pub(crate) event_type: String,
    pub(crate) source: String,
    pub(crate) kind: String,
    pub(crate) time_us: i64,
    pub(crate) causation_id: Option<String>,
    pub(crate) deadline_us: i64,
    pub(crate) traceparent: String,
    pub(crate) data: String,
    pub(crate) saga_data: String,
}

/// One copy of a dead letter as recorded, with the message it holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredDeadLetter {
    pub(crate) message_id: String,
    pub(crate) service: String,
    pub(crate) reason: String,
    pub(crate) saga_id: Option<String>,
    pub(crate) event_type: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) topic: String,
    pub(crate) message: RawMessage,
    pub(crate) recorded_us: i64,
}

/// What the recorder hands the store.
#[derive(Debug)]
pub(crate) enum Record {
    Event(Envelope),
    DeadLetter(RawMessage),
}

/// The monitor's store: `sqlite://PATH` (or `sqlite::memory:`), or, with the `postgres`
/// feature, `postgres://user:pass@host/db` (the monitor's two tables are created if missing).
#[derive(Clone)]
pub struct MonitorStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(postgres::PostgresStore),
}

/// Runs the same call on whichever backend the store has.
macro_rules! on_backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sqlite($backend) => $call,
            #[cfg(feature = "postgres")]
            Backend::Postgres($backend) => $call,
        }
    };
}

impl MonitorStore {
    /// Opens (creating if need be) the SQLite store at `url`: `sqlite://PATH`, or
    /// `sqlite::memory:` for one that lives as long as the process. For any store URL, use
    /// [`connect`](Self::connect).
    pub fn open(url: &str) -> Result<Self, MonitorError> {
        Ok(Self {
            backend: Backend::Sqlite(sqlite::SqliteStore::open(url)?),
        })
    }

    /// Opens the store at `url`: SQLite as [`open`](Self::open) does, or PostgreSQL
    /// (`postgres://...`, with the `postgres` feature). The URL's password appears in no
    /// error.
    pub async fn connect(url: &str) -> Result<Self, MonitorError> {
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self {
                backend: Backend::Postgres(postgres::PostgresStore::connect(url).await?),
            });
        }
        Self::open(url)
    }

    /// Records `records` in one transaction; returns how many were new.
    pub(crate) async fn record(&self, records: Arc<Vec<Record>>) -> Result<usize, MonitorError> {
        on_backend!(self, store => store.record(records).await)
    }

    /// Every event but the services' descriptions, by saga, each saga's in the order they
    /// were emitted; only `sagas` when given.
    pub(crate) async fn saga_events(
        &self,
        sagas: Option<Vec<String>>,
    ) -> Result<Vec<StoredEvent>, MonitorError> {
        on_backend!(self, store => store.saga_events(sagas).await)
    }

    /// The sagas whose id, or any of whose events' type, source, data or saga data, holds
    /// `text`.
    pub(crate) async fn search(&self, text: String) -> Result<Vec<String>, MonitorError> {
        on_backend!(self, store => store.search(like_pattern(&text)).await)
    }

    /// Every dead-letter copy (of `saga` only, when given), oldest first.
    pub(crate) async fn dead_letters(
        &self,
        saga: Option<String>,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        on_backend!(self, store => store.dead_letters(saga).await)
    }

    /// Every copy of dead letter `message_id`, oldest first (none if not recorded).
    pub(crate) async fn copies(
        &self,
        message_id: String,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        on_backend!(self, store => store.copies(message_id).await)
    }

    /// Every service description recorded, oldest first.
    pub(crate) async fn descriptions(&self) -> Result<Vec<StoredEvent>, MonitorError> {
        on_backend!(self, store => store.descriptions().await)
    }

    /// How many events of each type were recorded, control events aside.
    pub(crate) async fn type_counts(&self) -> Result<Vec<(String, usize)>, MonitorError> {
        on_backend!(self, store => store.type_counts().await)
    }

    /// How many events and dead-letter copies are recorded.
    pub async fn counts(&self) -> Result<(usize, usize), MonitorError> {
        on_backend!(self, store => store.counts().await)
    }
}

/// A `LIKE` pattern (escape character `\\`) matching any text that contains `text`.
fn like_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// The store URLs this build opens, as an error names them.
#[cfg(feature = "postgres")]
pub(crate) const SUPPORTED: &str = "sqlite://PATH, sqlite::memory: or postgres://user:pass@host/db";
#[cfg(not(feature = "postgres"))]
pub(crate) const SUPPORTED: &str =
    "sqlite://PATH or sqlite::memory: (postgres:// needs the `postgres` feature)";

/// A store URL the monitor does not open; its password, if any, left out.
fn unsupported(url: &str) -> MonitorError {
    let shown = match choreo_core::StoreUrl::parse(url) {
        Ok(parsed) => parsed.redacted(),
        Err(_) => url.split_once("://").map_or_else(
            || "(not a URL)".to_owned(),
            |(scheme, _)| format!("{scheme}://..."),
        ),
    };
    MonitorError::StoreUrl(shown)
}

/// The record of one event.
fn event_columns(envelope: &Envelope) -> EventColumns<'_> {
    EventColumns {
        id: envelope.id.to_string(),
        saga_id: envelope.saga_id.to_string(),
        event_type: &envelope.event_type,
        source: &envelope.source,
        kind: envelope.kind.as_str(),
        time_us: micros(envelope.time),
        causation_id: envelope.causation_id.map(|id| id.to_string()),
        deadline_us: micros(envelope.deadline.instant()),
        traceparent: envelope.trace.traceparent().unwrap_or_default(),
        data: envelope.data.get(),
        saga_data: if envelope.saga_data.is_empty() {
            "{}"
        } else {
            envelope.saga_data.as_json()
        },
    }
}

/// An event's columns, as both backends write them.
struct EventColumns<'a> {
    id: String,
    saga_id: String,
    event_type: &'a str,
    source: &'a str,
    kind: &'static str,
    time_us: i64,
    causation_id: Option<String>,
    deadline_us: i64,
    traceparent: &'a str,
    data: &'a str,
    saga_data: &'a str,
}
const DESCRIBED: &str = "choreo.ServiceDescribed.v1";

/// What a dead-letter message says about itself.
struct DeadLetterOf {
    message_id: String,
    service: String,
    reason: String,
    saga_id: Option<String>,
    event_type: Option<String>,
    source: Option<String>,
    topic: String,
}

impl DeadLetterOf {
    fn read(message: &RawMessage) -> Self {
        let text = |name: &str| {
            message
                .header(name)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        // Decoding reads the CloudEvents attributes alone: the dead-letter headers beside
        // them are no obstacle.
        let envelope = Envelope::decode(message).ok();
        Self {
            message_id: envelope
                .as_ref()
                .map(|envelope| envelope.id.to_string())
                .unwrap_or_else(|| digest(&message.body)),
            service: text(DEAD_LETTER_SERVICE_HEADER).unwrap_or_default(),
            reason: text(DEAD_LETTER_REASON_HEADER).unwrap_or_default(),
            saga_id: envelope
                .as_ref()
                .map(|envelope| envelope.saga_id.to_string())
                .or_else(|| text(DEAD_LETTER_SAGA_HEADER)),
            event_type: envelope
                .as_ref()
                .map(|envelope| envelope.event_type.clone()),
            source: envelope.as_ref().map(|envelope| envelope.source.clone()),
            topic: text(DEAD_LETTER_TOPIC_HEADER).unwrap_or_default(),
        }
    }
}

/// A stable digest of a message body that has no event id: 64-bit FNV-1a, in hex.
fn digest(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("message-{hash:016x}")
}

fn encode_headers(headers: &Headers) -> String {
    let pairs: Vec<(&str, String)> = headers
        .iter()
        .map(|(name, value)| {
            let hex: String = value.iter().map(|byte| format!("{byte:02x}")).collect();
            (name, hex)
        })
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

fn decode_headers(json: &str) -> Headers {
    let pairs: Vec<(String, String)> = serde_json::from_str(json).unwrap_or_default();
    pairs
        .into_iter()
        .map(|(name, hex)| {
            let bytes: Vec<u8> = (0..hex.len() / 2)
                .filter_map(|at| u8::from_str_radix(hex.get(at * 2..at * 2 + 2)?, 16).ok())
                .collect();
            (name, bytes)
        })
        .collect()
}

/// Microseconds since the Unix epoch (negative before it).
pub(crate) fn micros(instant: SystemTime) -> i64 {
    match instant.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_micros() as i64,
        Err(before) => -(before.duration().as_micros() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_store_url_names_the_stores_expected_and_not_its_password() {
        let said = MonitorStore::open("redis://admin:s3cret@cache:6379/0")
            .err()
            .unwrap()
            .to_string();
        assert!(!said.contains("s3cret"), "{said}");
        assert!(
            said.contains("redis://") && said.contains("sqlite://PATH"),
            "{said}"
        );
        assert!(said.contains("postgres://"), "{said}");
    }
}

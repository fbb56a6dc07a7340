//! The monitor's store in a SQLite file: the default, for one monitor beside its services.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use choreo_core::RawMessage;
use rusqlite::{params, Connection};

use super::{
    decode_headers, encode_headers, event_columns, micros, unsupported, DeadLetterOf, Record,
    StoredDeadLetter, StoredEvent, DESCRIBED,
};
use crate::error::MonitorError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    saga_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    causation_id TEXT,
    deadline_us INTEGER NOT NULL,
    traceparent TEXT NOT NULL,
    data TEXT NOT NULL,
    saga_data TEXT NOT NULL,
    recorded_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_saga ON events (saga_id, time_us);
CREATE INDEX IF NOT EXISTS events_by_cause ON events (causation_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    service TEXT NOT NULL,
    reason TEXT NOT NULL,
    saga_id TEXT,
    event_type TEXT,
    source TEXT,
    topic TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    recorded_us INTEGER NOT NULL,
    UNIQUE (message_id, service, reason)
);
CREATE INDEX IF NOT EXISTS dead_letters_by_saga ON dead_letters (saga_id);
";

/// The monitor's SQLite file.
#[derive(Clone)]
pub(super) struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if need be) the store at `url`: `sqlite://PATH`, or `sqlite::memory:`.
    pub(super) fn open(url: &str) -> Result<Self, MonitorError> {
        let connection = if url == "sqlite::memory:" {
            Connection::open_in_memory()
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(unsupported(url));
            }
            let path = PathBuf::from(path);
            if let Some(parent) = path
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).map_err(|error| {
                    MonitorError::Store(format!("cannot create {}: {error}", parent.display()))
                })?;
            }
            Connection::open(path)
        } else {
            return Err(unsupported(url));
        }
        .map_err(store_error)?;
        let _: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(store_error)?;
        connection.execute_batch(SCHEMA).map_err(store_error)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, MonitorError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(|error| MonitorError::Store(error.to_string()))?
        .map_err(store_error)
    }

    /// Records `records` in one transaction; returns how many were new.
    pub(super) async fn record(&self, records: Arc<Vec<Record>>) -> Result<usize, MonitorError> {
        let now = micros(SystemTime::now());
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let mut added = 0;
            {
                let mut event = transaction.prepare_cached(
                    "INSERT OR IGNORE INTO events (id, saga_id, event_type, source, kind, time_us,
                     causation_id, deadline_us, traceparent, data, saga_data, recorded_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                let mut letter = transaction.prepare_cached(
                    "INSERT OR IGNORE INTO dead_letters (message_id, service, reason, saga_id,
                     event_type, source, topic, headers, body, recorded_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for record in records.iter() {
                    added += match record {
                        Record::Event(envelope) => {
                            let columns = event_columns(envelope);
                            event.execute(params![
                                columns.id,
                                columns.saga_id,
                                columns.event_type,
                                columns.source,
                                columns.kind,
                                columns.time_us,
                                columns.causation_id,
                                columns.deadline_us,
                                columns.traceparent,
                                columns.data,
                                columns.saga_data,
                                now,
                            ])?
                        }
                        Record::DeadLetter(message) => {
                            let letter_of = DeadLetterOf::read(message);
                            letter.execute(params![
                                letter_of.message_id,
                                letter_of.service,
                                letter_of.reason,
                                letter_of.saga_id,
                                letter_of.event_type,
                                letter_of.source,
                                letter_of.topic,
                                encode_headers(&message.headers),
                                &message.body,
                                now,
                            ])?
                        }
                    };
                }
            }
            transaction.commit()?;
            Ok(added)
        })
        .await
    }

    /// Every event but the services' descriptions, by saga, each saga's in the order they
    /// were emitted; only `sagas` when given.
    pub(super) async fn saga_events(
        &self,
        sagas: Option<Vec<String>>,
    ) -> Result<Vec<StoredEvent>, MonitorError> {
        self.with(move |connection| {
            let mut events = Vec::new();
            let columns = "id, saga_id, event_type, source, kind, time_us, causation_id,
                           deadline_us, traceparent, data, saga_data";
            match sagas {
                None => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {columns} FROM events WHERE event_type != ?1
                         ORDER BY saga_id, time_us, seq"
                    ))?;
                    let rows = statement.query_map([DESCRIBED], stored_event)?;
                    for row in rows {
                        events.push(row?);
                    }
                }
                Some(sagas) => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {columns} FROM events WHERE saga_id = ?1 AND event_type != ?2
                         ORDER BY time_us, seq"
                    ))?;
                    for saga in sagas {
                        let rows = statement.query_map(params![saga, DESCRIBED], stored_event)?;
                        for row in rows {
                            events.push(row?);
                        }
                    }
                }
            }
            Ok(events)
        })
        .await
    }

    /// The sagas whose id, or any of whose events' type, source, data or saga data, holds
    /// `text`.
    pub(super) async fn search(&self, pattern: String) -> Result<Vec<String>, MonitorError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT DISTINCT saga_id FROM events WHERE event_type != ?2 AND (
                    saga_id LIKE ?1 ESCAPE '\\' OR event_type LIKE ?1 ESCAPE '\\'
                    OR source LIKE ?1 ESCAPE '\\' OR data LIKE ?1 ESCAPE '\\'
                    OR saga_data LIKE ?1 ESCAPE '\\')
                 UNION SELECT DISTINCT saga_id FROM dead_letters
                    WHERE saga_id IS NOT NULL AND saga_id LIKE ?1 ESCAPE '\\'",
            )?;
            let rows = statement.query_map(params![pattern, DESCRIBED], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// Every dead-letter copy (of `saga` only, when given), oldest first.
    pub(super) async fn dead_letters(
        &self,
        saga: Option<String>,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        self.with(move |connection| {
            let columns = "message_id, service, reason, saga_id, event_type, source, topic,
                           headers, body, recorded_us";
            let mut letters = Vec::new();
            match saga {
                None => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {columns} FROM dead_letters ORDER BY seq"
                    ))?;
                    for row in statement.query_map([], stored_dead_letter)? {
                        letters.push(row?);
                    }
                }
                Some(saga) => {
                    let mut statement = connection.prepare_cached(&format!(
                        "SELECT {columns} FROM dead_letters WHERE saga_id = ?1 ORDER BY seq"
                    ))?;
                    for row in statement.query_map([saga], stored_dead_letter)? {
                        letters.push(row?);
                    }
                }
            }
            Ok(letters)
        })
        .await
    }

    /// Every copy of dead letter `message_id`, oldest first.
    pub(super) async fn copies(
        &self,
        message_id: String,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT message_id, service, reason, saga_id, event_type, source, topic,
                 headers, body, recorded_us FROM dead_letters WHERE message_id = ?1
                 ORDER BY seq",
            )?;
            let rows = statement.query_map([message_id], stored_dead_letter)?;
            rows.collect()
        })
        .await
    }

    /// Every service description recorded, oldest first.
    pub(super) async fn descriptions(&self) -> Result<Vec<StoredEvent>, MonitorError> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT id, saga_id, event_type, source, kind, time_us, causation_id,
                 deadline_us, traceparent, data, saga_data FROM events WHERE event_type = ?1
                 ORDER BY time_us, seq",
            )?;
            let rows = statement.query_map([DESCRIBED], stored_event)?;
            rows.collect()
        })
        .await
    }

    /// How many events of each type were recorded, control events aside.
    pub(super) async fn type_counts(&self) -> Result<Vec<(String, usize)>, MonitorError> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT event_type, COUNT(*) FROM events WHERE event_type NOT LIKE 'choreo.%'
                 GROUP BY event_type ORDER BY event_type",
            )?;
            let rows =
                statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as usize)))?;
            rows.collect()
        })
        .await
    }

    /// How many events and dead-letter copies are recorded.
    pub(super) async fn counts(&self) -> Result<(usize, usize), MonitorError> {
        self.with(|connection| {
            let events: i64 =
                connection.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))?;
            let letters: i64 =
                connection.query_row("SELECT COUNT(*) FROM dead_letters", [], |row| row.get(0))?;
            Ok((events as usize, letters as usize))
        })
        .await
    }
}

fn stored_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        saga_id: row.get(1)?,
        event_type: row.get(2)?,
        source: row.get(3)?,
        kind: row.get(4)?,
        time_us: row.get(5)?,
        causation_id: row.get(6)?,
        deadline_us: row.get(7)?,
        traceparent: row.get(8)?,
        data: row.get(9)?,
        saga_data: row.get(10)?,
    })
}

fn stored_dead_letter(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredDeadLetter> {
    let service: String = row.get(1)?;
    Ok(StoredDeadLetter {
        message_id: row.get(0)?,
        service,
        reason: row.get(2)?,
        saga_id: row.get(3)?,
        event_type: row.get(4)?,
        source: row.get(5)?,
        topic: row.get(6)?,
        message: RawMessage {
            headers: decode_headers(&row.get::<_, String>(7)?),
            body: row.get(8)?,
        },
        recorded_us: row.get(9)?,
    })
}

fn store_error(error: rusqlite::Error) -> MonitorError {
    MonitorError::Store(error.to_string())
}

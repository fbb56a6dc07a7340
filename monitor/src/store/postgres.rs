//! The monitor's store in a PostgreSQL database, for a monitor whose history several people
//! query, or that outlives the machine it runs on. The same two tables as in SQLite.

use std::sync::Arc;
use std::time::SystemTime;

use choreo_core::{RawMessage, StoreUrl};
use choreo_postgres::PostgresConfig;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;

use super::{
    decode_headers, encode_headers, event_columns, micros, DeadLetterOf, Record, StoredDeadLetter,
    StoredEvent, DESCRIBED,
};
use crate::error::MonitorError;

const SCHEMA: [&str; 5] = [
    "CREATE TABLE IF NOT EXISTS choreo_monitor_events (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        saga_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        time_us BIGINT NOT NULL,
        causation_id TEXT,
        deadline_us BIGINT NOT NULL,
        traceparent TEXT NOT NULL,
        data TEXT NOT NULL,
        saga_data TEXT NOT NULL,
        recorded_us BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS choreo_monitor_events_by_saga
        ON choreo_monitor_events (saga_id, time_us)",
    "CREATE TABLE IF NOT EXISTS choreo_monitor_dead_letters (
        seq BIGSERIAL PRIMARY KEY,
        message_id TEXT NOT NULL,
        service TEXT NOT NULL,
        reason TEXT NOT NULL,
        saga_id TEXT,
        event_type TEXT,
        source TEXT,
        topic TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BYTEA NOT NULL,
        recorded_us BIGINT NOT NULL,
        UNIQUE (message_id, service, reason)
    )",
    "CREATE INDEX IF NOT EXISTS choreo_monitor_dead_letters_by_saga
        ON choreo_monitor_dead_letters (saga_id)",
    "CREATE INDEX IF NOT EXISTS choreo_monitor_events_by_cause
        ON choreo_monitor_events (causation_id)",
];

/// A statement with the event columns, `{columns}`, as a literal.
macro_rules! with_event_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            " id, saga_id, event_type, source, kind, time_us, causation_id, deadline_us,
              traceparent, data, saga_data ",
            $after
        )
    };
}

/// A statement with the dead-letter columns, as a literal.
macro_rules! with_letter_columns {
    ($before:literal, $after:literal) => {
        concat!(
            $before,
            " message_id, service, reason, saga_id, event_type, source, topic, headers, body,
              recorded_us ",
            $after
        )
    };
}

/// The monitor's PostgreSQL database.
#[derive(Clone)]
pub(super) struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database of `url` and creates the monitor's tables if missing.
    pub(super) async fn connect(url: &str) -> Result<Self, MonitorError> {
        let parsed =
            StoreUrl::parse(url).map_err(|error| MonitorError::Store(error.to_string()))?;
        let config = PostgresConfig::from_url(&parsed)
            .map_err(|error| MonitorError::Store(error.to_string()))?;
        let failed = |error: sqlx::Error| {
            MonitorError::Store(format!(
                "cannot open the monitor's store at {}: {error}",
                config.redacted()
            ))
        };
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(config.connect_options().clone())
            .await
            .map_err(failed)?;
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(failed)?;
        }
        Ok(Self { pool })
    }

    pub(super) async fn record(&self, records: Arc<Vec<Record>>) -> Result<usize, MonitorError> {
        let now = micros(SystemTime::now());
        let mut transaction = self.pool.begin().await.map_err(store_error)?;
        let mut added = 0;
        for record in records.iter() {
            let done = match record {
                Record::Event(envelope) => {
                    let columns = event_columns(envelope);
                    sqlx::query(
                        "INSERT INTO choreo_monitor_events (id, saga_id, event_type, source, kind,
                         time_us, causation_id, deadline_us, traceparent, data, saga_data,
                         recorded_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                         ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(columns.id)
                    .bind(columns.saga_id)
                    .bind(columns.event_type)
                    .bind(columns.source)
                    .bind(columns.kind)
                    .bind(columns.time_us)
                    .bind(columns.causation_id)
                    .bind(columns.deadline_us)
                    .bind(columns.traceparent)
                    .bind(columns.data)
                    .bind(columns.saga_data)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                }
                Record::DeadLetter(message) => {
                    let letter = DeadLetterOf::read(message);
                    sqlx::query(
                        "INSERT INTO choreo_monitor_dead_letters (message_id, service, reason,
                         saga_id, event_type, source, topic, headers, body, recorded_us)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                         ON CONFLICT (message_id, service, reason) DO NOTHING",
                    )
                    .bind(letter.message_id)
                    .bind(letter.service)
                    .bind(letter.reason)
                    .bind(letter.saga_id)
                    .bind(letter.event_type)
                    .bind(letter.source)
                    .bind(letter.topic)
                    .bind(encode_headers(&message.headers))
                    .bind(&message.body)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                }
            };
            added += done.map_err(store_error)?.rows_affected() as usize;
        }
        transaction.commit().await.map_err(store_error)?;
        Ok(added)
    }

    pub(super) async fn saga_events(
        &self,
        sagas: Option<Vec<String>>,
    ) -> Result<Vec<StoredEvent>, MonitorError> {
        let rows = match sagas {
            None => {
                sqlx::query(with_event_columns!(
                    "SELECT",
                    "FROM choreo_monitor_events WHERE event_type <> $1
                     ORDER BY saga_id, time_us, seq"
                ))
                .bind(DESCRIBED)
                .fetch_all(&self.pool)
                .await
            }
            Some(sagas) => {
                sqlx::query(with_event_columns!(
                    "SELECT",
                    "FROM choreo_monitor_events
                     WHERE saga_id = ANY($1) AND event_type <> $2 ORDER BY saga_id, time_us, seq"
                ))
                .bind(sagas)
                .bind(DESCRIBED)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(store_error)?;
        rows.iter().map(stored_event).collect()
    }

    pub(super) async fn search(&self, pattern: String) -> Result<Vec<String>, MonitorError> {
        let rows = sqlx::query(
            "SELECT DISTINCT saga_id FROM choreo_monitor_events WHERE event_type <> $2 AND (
                saga_id LIKE $1 ESCAPE '\\' OR event_type LIKE $1 ESCAPE '\\'
                OR source LIKE $1 ESCAPE '\\' OR data LIKE $1 ESCAPE '\\'
                OR saga_data LIKE $1 ESCAPE '\\')
             UNION SELECT DISTINCT saga_id FROM choreo_monitor_dead_letters
                WHERE saga_id IS NOT NULL AND saga_id LIKE $1 ESCAPE '\\'",
        )
        .bind(pattern)
        .bind(DESCRIBED)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(store_error))
            .collect()
    }

    pub(super) async fn dead_letters(
        &self,
        saga: Option<String>,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        let rows = match saga {
            None => {
                sqlx::query(with_letter_columns!(
                    "SELECT",
                    "FROM choreo_monitor_dead_letters ORDER BY seq"
                ))
                .fetch_all(&self.pool)
                .await
            }
            Some(saga) => {
                sqlx::query(with_letter_columns!(
                    "SELECT",
                    "FROM choreo_monitor_dead_letters
                     WHERE saga_id = $1 ORDER BY seq"
                ))
                .bind(saga)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(store_error)?;
        rows.iter().map(stored_dead_letter).collect()
    }

    pub(super) async fn copies(
        &self,
        message_id: String,
    ) -> Result<Vec<StoredDeadLetter>, MonitorError> {
        let rows = sqlx::query(with_letter_columns!(
            "SELECT",
            "FROM choreo_monitor_dead_letters WHERE message_id = $1 ORDER BY seq"
        ))
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(stored_dead_letter).collect()
    }

    pub(super) async fn descriptions(&self) -> Result<Vec<StoredEvent>, MonitorError> {
        let rows = sqlx::query(with_event_columns!(
            "SELECT",
            "FROM choreo_monitor_events WHERE event_type = $1
             ORDER BY time_us, seq"
        ))
        .bind(DESCRIBED)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter().map(stored_event).collect()
    }

    pub(super) async fn type_counts(&self) -> Result<Vec<(String, usize)>, MonitorError> {
        let rows = sqlx::query(
            "SELECT event_type, COUNT(*) FROM choreo_monitor_events
             WHERE event_type NOT LIKE 'choreo.%' GROUP BY event_type ORDER BY event_type",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let count: i64 = row.try_get(1).map_err(store_error)?;
                Ok((row.try_get(0).map_err(store_error)?, count as usize))
            })
            .collect()
    }

    pub(super) async fn counts(&self) -> Result<(usize, usize), MonitorError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM choreo_monitor_events),
                    (SELECT COUNT(*) FROM choreo_monitor_dead_letters)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        let events: i64 = row.try_get(0).map_err(store_error)?;
        let letters: i64 = row.try_get(1).map_err(store_error)?;
        Ok((events as usize, letters as usize))
    }
}

fn stored_event(row: &PgRow) -> Result<StoredEvent, MonitorError> {
    Ok(StoredEvent {
        id: row.try_get(0).map_err(store_error)?,
        saga_id: row.try_get(1).map_err(store_error)?,
        event_type: row.try_get(2).map_err(store_error)?,
        source: row.try_get(3).map_err(store_error)?,
        kind: row.try_get(4).map_err(store_error)?,
        time_us: row.try_get(5).map_err(store_error)?,
        causation_id: row.try_get(6).map_err(store_error)?,
        deadline_us: row.try_get(7).map_err(store_error)?,
        traceparent: row.try_get(8).map_err(store_error)?,
        data: row.try_get(9).map_err(store_error)?,
        saga_data: row.try_get(10).map_err(store_error)?,
    })
}

fn stored_dead_letter(row: &PgRow) -> Result<StoredDeadLetter, MonitorError> {
    let headers: String = row.try_get(7).map_err(store_error)?;
    Ok(StoredDeadLetter {
        message_id: row.try_get(0).map_err(store_error)?,
        service: row.try_get(1).map_err(store_error)?,
        reason: row.try_get(2).map_err(store_error)?,
        saga_id: row.try_get(3).map_err(store_error)?,
        event_type: row.try_get(4).map_err(store_error)?,
        source: row.try_get(5).map_err(store_error)?,
        topic: row.try_get(6).map_err(store_error)?,
        message: RawMessage {
            headers: decode_headers(&headers),
            body: row.try_get(8).map_err(store_error)?,
        },
        recorded_us: row.try_get(9).map_err(store_error)?,
    })
}

fn store_error(error: sqlx::Error) -> MonitorError {
    MonitorError::Store(error.to_string())
}

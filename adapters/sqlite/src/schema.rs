//! The store's tables (migrations/), and reading and writing them: each function is one
//! part of a store call, run on the store's connection inside the caller's transaction.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use choreo_core::journal::{AbortReason, CompensationState, SagaRecord, SagaStatus, StepRecord};
use choreo_core::store::{
    ActiveSaga, Commit, JournalChange, Outgoing, OutgoingKind, Purged, Recovery, SagaHeader, Sent,
    SentKind,
};
use choreo_core::{Deadline, Envelope, EventId, SagaId};
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Every migration, in order: (version, name, SQL).
const MIGRATIONS: [(i64, &str, &str); 1] = [(
    1,
    "saga state",
    include_str!("../migrations/0001_saga_state.sql"),
)];

/// Brings the schema up to date, each migration in a transaction of its own.
pub(crate) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS choreo_migrations (
            version    INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
    )?;
    for (version, name, sql) in MIGRATIONS {
        let transaction =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: bool = transaction.query_row(
            "SELECT EXISTS (SELECT 1 FROM choreo_migrations WHERE version = ?1)",
            [version],
            |row| row.get(0),
        )?;
        if !applied {
            transaction.execute_batch(sql)?;
            transaction.execute(
                "INSERT INTO choreo_migrations (version, name) VALUES (?1, ?2)",
                params![version, name],
            )?;
        }
        transaction.commit()?;
    }
    Ok(())
}

/// What the store's own data failed on: a row that does not decode.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored row of saga {saga} does not decode: {reason}")]
    Corrupt { saga: String, reason: String },
}

pub(crate) type ReadResult<T> = Result<T, ReadError>;

/// The record of `saga`, if any, and the ids of every event handled for it.
pub(crate) fn load(
    conn: &Connection,
    service: &str,
    saga: SagaId,
) -> ReadResult<(Option<SagaRecord>, HashSet<EventId>)> {
    let saga_text = saga.to_string();
    let header = conn
        .prepare_cached(
            "SELECT deadline, status, abort_reason, initiated_here, abort_published,
                    compensation_acknowledged, abort_event
             FROM choreo_sagas WHERE service = ?1 AND saga_id = ?2",
        )?
        .query_row(params![service, saga_text], header_columns)
        .optional()?;
    let record = match header {
        None => None,
        Some(columns) => {
            let mut record = SagaRecord::from_header(columns.decode(saga)?);
            let mut statement = conn.prepare_cached(
                "SELECT input_id, output, withheld, published, compensation, compensation_error
                 FROM choreo_steps WHERE service = ?1 AND saga_id = ?2 ORDER BY position",
            )?;
            let mut rows = statement.query(params![service, saga_text])?;
            while let Some(row) = rows.next()? {
                record.steps.push(step(saga, row)?);
            }
            Some(record)
        }
    };
    let mut handled = HashSet::new();
    let mut statement = conn
        .prepare_cached("SELECT event_id FROM choreo_inbox WHERE service = ?1 AND saga_id = ?2")?;
    let mut rows = statement.query(params![service, saga_text])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        handled.insert(id.parse().map_err(|_| ReadError::Corrupt {
            saga: saga_text.clone(),
            reason: format!("inbox event id `{id}`"),
        })?);
    }
    Ok((record, handled))
}

/// The columns of a `choreo_sagas` row, before decoding.
struct HeaderColumns {
    deadline: i64,
    status: String,
    abort_reason: Option<String>,
    initiated_here: bool,
    abort_published: bool,
    compensation_acknowledged: bool,
    abort_event: Option<String>,
}

fn header_columns(row: &Row<'_>) -> rusqlite::Result<HeaderColumns> {
    Ok(HeaderColumns {
        deadline: row.get(0)?,
        status: row.get(1)?,
        abort_reason: row.get(2)?,
        initiated_here: row.get(3)?,
        abort_published: row.get(4)?,
        compensation_acknowledged: row.get(5)?,
        abort_event: row.get(6)?,
    })
}

impl HeaderColumns {
    fn decode(self, saga: SagaId) -> ReadResult<SagaHeader> {
        let corrupt = |reason: String| ReadError::Corrupt {
            saga: saga.to_string(),
            reason,
        };
        let status = match (self.status.as_str(), self.abort_reason.as_deref()) {
            ("active", _) => SagaStatus::Active,
            ("completed", _) => SagaStatus::Completed,
            ("aborted", Some(reason)) => SagaStatus::Aborted {
                reason: abort_reason(reason)
                    .ok_or_else(|| corrupt(format!("abort reason `{reason}`")))?,
            },
            (status, _) => return Err(corrupt(format!("status `{status}`"))),
        };
        let abort = match self.abort_event {
            Some(json) => Some(Box::new(envelope(&json).map_err(corrupt)?)),
            None => None,
        };
        Ok(SagaHeader {
            saga_id: saga,
            deadline: Deadline::at(instant(self.deadline)),
            status,
            initiated_here: self.initiated_here,
            abort_published: self.abort_published,
            compensation_acknowledged: self.compensation_acknowledged,
            abort,
        })
    }
}

fn step(saga: SagaId, row: &Row<'_>) -> ReadResult<StepRecord> {
    let corrupt = |reason: String| ReadError::Corrupt {
        saga: saga.to_string(),
        reason,
    };
    let input: Option<String> = row.get(0)?;
    let output: String = row.get(1)?;
    let compensation: String = row.get(4)?;
    let error: Option<String> = row.get(5)?;
    Ok(StepRecord {
        input: match input {
            Some(id) => Some(
                id.parse()
                    .map_err(|_| corrupt(format!("event id `{id}`")))?,
            ),
            None => None,
        },
        output: envelope(&output).map_err(corrupt)?,
        withheld: row.get(2)?,
        published: row.get(3)?,
        compensation: match (compensation.as_str(), error) {
            ("pending", _) => CompensationState::Pending,
            ("compensated", _) => CompensationState::Compensated,
            ("not_required", _) => CompensationState::NotRequired,
            ("failed", reason) => CompensationState::Failed {
                reason: reason.unwrap_or_default(),
            },
            (other, _) => return Err(corrupt(format!("compensation state `{other}`"))),
        },
    })
}

/// Applies one handling's changes. The caller holds the transaction.
pub(crate) fn apply(conn: &Connection, commit: &Commit) -> rusqlite::Result<()> {
    let (service, saga) = (commit.service.as_str(), commit.saga_id.to_string());
    for change in &commit.changes {
        match change {
            JournalChange::Created(header) => write_header(
                conn,
                "INSERT INTO choreo_sagas (service, saga_id, deadline, status, abort_reason,
                     initiated_here, abort_published, compensation_acknowledged, abort_event)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                service,
                &saga,
                header,
            )
            .map(drop)?,
            JournalChange::Updated(header) => write_header(
                conn,
                "UPDATE choreo_sagas SET deadline = ?3, status = ?4, abort_reason = ?5,
                     initiated_here = ?6, abort_published = ?7,
                     compensation_acknowledged = ?8, abort_event = ?9
                 WHERE service = ?1 AND saga_id = ?2",
                service,
                &saga,
                header,
            )
            .map(drop)?,
            JournalChange::StepAdded { position, step } => {
                let (compensation, error) = compensation(&step.compensation);
                conn.prepare_cached(
                    "INSERT INTO choreo_steps (service, saga_id, position, input_id, output,
                         withheld, published, compensation, compensation_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute(params![
                    service,
                    saga,
                    *position as i64,
                    step.input.map(|id| id.to_string()),
                    step.output.to_json(),
                    step.withheld,
                    step.published,
                    compensation,
                    error,
                ])?;
            }
            JournalChange::CompensationChanged { position, state } => {
                let (compensation, error) = compensation(state);
                conn.prepare_cached(
                    "UPDATE choreo_steps SET compensation = ?4, compensation_error = ?5
                     WHERE service = ?1 AND saga_id = ?2 AND position = ?3",
                )?
                .execute(params![
                    service,
                    saga,
                    *position as i64,
                    compensation,
                    error
                ])?;
            }
            // The SPI may grow; a change this store does not know is not silently dropped.
            _ => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("this store does not know the journal change {change:?}").into(),
                ))
            }
        }
    }
    if let Some(handled) = &commit.handled {
        conn.prepare_cached(
            "INSERT INTO choreo_inbox (service, event_id, saga_id, deadline) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            service,
            handled.event_id.to_string(),
            saga,
            nanos(handled.deadline.instant()),
        ])?;
    }
    for outgoing in &commit.outbox {
        let (kind, reason) = match &outgoing.kind {
            OutgoingKind::DeadLetter { reason } => ("dead_letter", Some(reason.as_str())),
            _ => ("event", None),
        };
        conn.prepare_cached(
            "INSERT INTO choreo_outbox (service, saga_id, event_id, kind, envelope, dead_letter_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            service,
            saga,
            outgoing.envelope.id.to_string(),
            kind,
            outgoing.envelope.to_json(),
            reason,
        ])?;
    }
    Ok(())
}

/// Runs `sql`, which takes a saga's row as `?1` to `?9`, for `header`.
fn write_header(
    conn: &Connection,
    sql: &str,
    service: &str,
    saga: &str,
    header: &SagaHeader,
) -> rusqlite::Result<usize> {
    let (status, reason) = status(&header.status);
    conn.prepare_cached(sql)?.execute(params![
        service,
        saga,
        nanos(header.deadline.instant()),
        status,
        reason,
        header.initiated_here,
        header.abort_published,
        header.compensation_acknowledged,
        header.abort.as_deref().map(Envelope::to_json),
    ])
}

pub(crate) fn mark_sent(conn: &Connection, service: &str, sent: &[Sent]) -> rusqlite::Result<()> {
    for sent in sent {
        match sent.kind {
            SentKind::Step { position } => {
                conn.prepare_cached(
                    "UPDATE choreo_steps SET published = 1
                     WHERE service = ?1 AND saga_id = ?2 AND position = ?3",
                )?
                .execute(params![
                    service,
                    sent.saga_id.to_string(),
                    position as i64
                ])?;
            }
            SentKind::Event | SentKind::DeadLetter => {
                let kind = if sent.kind == SentKind::Event {
                    "event"
                } else {
                    "dead_letter"
                };
                conn.prepare_cached(
                    "DELETE FROM choreo_outbox WHERE service = ?1 AND kind = ?2 AND event_id = ?3",
                )?
                .execute(params![service, kind, sent.event_id.to_string()])?;
            }
        }
    }
    Ok(())
}

pub(crate) fn recover(conn: &Connection, service: &str) -> ReadResult<Recovery> {
    let mut recovery = Recovery::default();
    let mut statement = conn.prepare_cached(
        "SELECT saga_id, deadline, initiated_here FROM choreo_sagas
         WHERE service = ?1 AND status = 'active' AND abort_published = 0",
    )?;
    let mut rows = statement.query([service])?;
    while let Some(row) = rows.next()? {
        recovery.timers.push(ActiveSaga {
            saga_id: saga_id(row.get(0)?)?,
            deadline: Deadline::at(instant(row.get(1)?)),
            initiated_here: row.get(2)?,
        });
    }
    let mut statement = conn.prepare_cached(
        "SELECT saga_id FROM choreo_sagas
         WHERE service = ?1 AND status = 'aborted' AND compensation_acknowledged = 0",
    )?;
    let mut rows = statement.query([service])?;
    while let Some(row) = rows.next()? {
        recovery.unfinished.push(saga_id(row.get(0)?)?);
    }
    let mut statement = conn.prepare_cached(
        "SELECT saga_id, position, output FROM choreo_steps
         WHERE service = ?1 AND published = 0 AND withheld = 0",
    )?;
    let mut rows = statement.query([service])?;
    while let Some(row) = rows.next()? {
        let saga: String = row.get(0)?;
        let position: i64 = row.get(1)?;
        let output: String = row.get(2)?;
        recovery.unsent.push(Outgoing {
            envelope: envelope(&output).map_err(|reason| ReadError::Corrupt { saga, reason })?,
            kind: OutgoingKind::Step {
                position: position as usize,
            },
        });
    }
    let mut statement = conn.prepare_cached(
        "SELECT saga_id, kind, envelope, dead_letter_reason FROM choreo_outbox
         WHERE service = ?1 ORDER BY seq",
    )?;
    let mut rows = statement.query([service])?;
    while let Some(row) = rows.next()? {
        let saga: String = row.get(0)?;
        let kind: String = row.get(1)?;
        let json: String = row.get(2)?;
        let reason: Option<String> = row.get(3)?;
        recovery.unsent.push(Outgoing {
            envelope: envelope(&json).map_err(|reason| ReadError::Corrupt {
                saga: saga.clone(),
                reason,
            })?,
            kind: match kind.as_str() {
                "dead_letter" => OutgoingKind::DeadLetter {
                    reason: reason.unwrap_or_default(),
                },
                _ => OutgoingKind::Event,
            },
        });
    }
    Ok(recovery)
}

pub(crate) fn purge(
    conn: &Connection,
    service: &str,
    before: SystemTime,
) -> rusqlite::Result<Purged> {
    const FINISHED: &str = "service = ?1 AND deadline < ?2
        AND (status = 'completed' OR (status = 'aborted' AND compensation_acknowledged = 1))";
    let before = nanos(before);
    conn.prepare_cached(&format!(
        "DELETE FROM choreo_steps WHERE service = ?1 AND saga_id IN
             (SELECT saga_id FROM choreo_sagas WHERE {FINISHED})"
    ))?
    .execute(params![service, before])?;
    let sagas = conn
        .prepare_cached(&format!("DELETE FROM choreo_sagas WHERE {FINISHED}"))?
        .execute(params![service, before])?;
    let handled = conn
        .prepare_cached("DELETE FROM choreo_inbox WHERE service = ?1 AND deadline < ?2")?
        .execute(params![service, before])?;
    Ok(Purged {
        sagas: sagas as u64,
        handled: handled as u64,
    })
}

fn status(status: &SagaStatus) -> (&'static str, Option<&'static str>) {
    match status {
        SagaStatus::Active => ("active", None),
        SagaStatus::Completed => ("completed", None),
        SagaStatus::Aborted { reason } => (
            "aborted",
            Some(match reason {
                AbortReason::Rejected => "rejected",
                AbortReason::TimedOut => "timed_out",
                AbortReason::DeadLettered => "dead_lettered",
            }),
        ),
    }
}

fn abort_reason(text: &str) -> Option<AbortReason> {
    Some(match text {
        "rejected" => AbortReason::Rejected,
        "timed_out" => AbortReason::TimedOut,
        "dead_lettered" => AbortReason::DeadLettered,
        _ => return None,
    })
}

fn compensation(state: &CompensationState) -> (&'static str, Option<&str>) {
    match state {
        CompensationState::Pending => ("pending", None),
        CompensationState::Compensated => ("compensated", None),
        CompensationState::Failed { reason } => ("failed", Some(reason.as_str())),
        CompensationState::NotRequired => ("not_required", None),
    }
}

fn envelope(json: &str) -> Result<Envelope, String> {
    Envelope::from_json(json.as_bytes()).map_err(|error| format!("stored event: {error}"))
}

fn saga_id(text: String) -> ReadResult<SagaId> {
    text.parse().map_err(|_| ReadError::Corrupt {
        reason: format!("saga id `{text}`"),
        saga: text,
    })
}

/// Nanoseconds since the Unix epoch; instants before it are stored as 0.
fn nanos(instant: SystemTime) -> i64 {
    instant
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
        })
}

fn instant(nanos: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

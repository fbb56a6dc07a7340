//! The store's tables (migrations/), and reading and writing them: each function is one
//! part of a store call, run on the store's connection inside the caller's transaction.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use choreo_core::journal::{AbortReason, CompensationState, SagaRecord, SagaStatus, StepRecord};
use choreo_core::store::{
    ActiveSaga, Commit, JournalChange, Outgoing, OutgoingKind, Purged, Recovery, SagaHeader, Sent,
    SentKind,
};
use choreo_core::{Deadline, Envelope, EventId, SagaId};
use rusqlite::{named_params, params, Connection, OptionalExtension, Row};

use crate::known::Known;

/// Every migration, in order: (version, name, SQL).
const MIGRATIONS: [(i64, &str, &str); 2] = [
    (
        1,
        "saga state",
        include_str!("../migrations/0001_saga_state.sql"),
    ),
    (
        2,
        "fewer writes per handling",
        include_str!("../migrations/0002_fewer_writes_per_handling.sql"),
    ),
];

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
    let row = conn
        .prepare_cached(
            "SELECT deadline, status, abort_reason, initiated_here, abort_published,
                    compensation_acknowledged, abort_event, recorded, handled, unsent
             FROM choreo_sagas WHERE service = ?1 AND saga_id = ?2",
        )?
        .query_row(params![service, saga_text], |row| {
            Ok((
                header_columns(row)?,
                row.get::<_, bool>(7)?,
                row.get::<_, String>(8)?,
                row.get::<_, String>(9)?,
            ))
        })
        .optional()?;
    let Some((columns, recorded, handled_ids, unsent)) = row else {
        return Ok((None, HashSet::new()));
    };
    let handled = handled_ids
        .split_ascii_whitespace()
        .map(|id| {
            id.parse().map_err(|_| ReadError::Corrupt {
                saga: saga_text.clone(),
                reason: format!("inbox event id `{id}`"),
            })
        })
        .collect::<ReadResult<HashSet<EventId>>>()?;
    if !recorded {
        return Ok((None, handled));
    }
    let mut record = SagaRecord::from_header(columns.decode(saga)?);
    let unsent: Vec<&str> = unsent.split_ascii_whitespace().collect();
    let mut statement = conn.prepare_cached(
        "SELECT input_id, output, withheld, position, compensation, compensation_error
         FROM choreo_steps WHERE service = ?1 AND saga_id = ?2 ORDER BY position",
    )?;
    let mut rows = statement.query(params![service, saga_text])?;
    while let Some(row) = rows.next()? {
        record.steps.push(step(saga, row, &unsent)?);
    }
    Ok((Some(record), handled))
}

/// Which sagas the file holds rows of, as the store's filter of keys.
pub(crate) fn known(conn: &Connection) -> ReadResult<Known> {
    let rows: i64 = conn.query_row("SELECT count(*) FROM choreo_sagas", [], |row| row.get(0))?;
    let known = Known::sized_for(u64::try_from(rows).unwrap_or(0));
    let mut statement = conn.prepare("SELECT service, saga_id FROM choreo_sagas")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let service: String = row.get(0)?;
        known.insert(&service, saga_id(row.get(1)?)?);
    }
    Ok(known)
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

/// A `choreo_steps` row; its output is published unless withheld or listed in `unsent`.
fn step(saga: SagaId, row: &Row<'_>, unsent: &[&str]) -> ReadResult<StepRecord> {
    let corrupt = |reason: String| ReadError::Corrupt {
        saga: saga.to_string(),
        reason,
    };
    let input: Option<String> = row.get(0)?;
    let output: String = row.get(1)?;
    let compensation: String = row.get(4)?;
    let error: Option<String> = row.get(5)?;
    let withheld: bool = row.get(2)?;
    let position: i64 = row.get(3)?;
    let listed = unsent.contains(&position.to_string().as_str());
    Ok(StepRecord {
        input: match input {
            Some(id) => Some(
                id.parse()
                    .map_err(|_| corrupt(format!("event id `{id}`")))?,
            ),
            None => None,
        },
        output: Arc::new(envelope(&output).map_err(corrupt)?),
        withheld,
        published: !withheld && !listed,
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

/// Appends `?10`, an event id, to a saga row's `handled` list and `?11`, step positions, to
/// its `unsent` one, NULL appending nothing; or sets `unsent` to `?12`, the whole list, when
/// that is not NULL.
macro_rules! append_to_lists {
    () => {
        "handled = CASE WHEN ?10 IS NULL THEN handled
             WHEN handled = '' THEN ?10 ELSE handled || ' ' || ?10 END,
         unsent = CASE WHEN ?12 IS NOT NULL THEN ?12 WHEN ?11 IS NULL THEN unsent
             WHEN unsent = '' THEN ?11 ELSE unsent || ' ' || ?11 END"
    };
}

/// A saga's row, made for its record; a row may hold the saga's inbox ids already.
const CREATE_SAGA: &str = concat!(
    "INSERT INTO choreo_sagas (service, saga_id, deadline, status, abort_reason,
         initiated_here, abort_published, compensation_acknowledged, abort_event, handled,
         unsent, recorded)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, COALESCE(?10, ''), COALESCE(?12, ?11, ''), 1)
     ON CONFLICT (service, saga_id) DO UPDATE SET
         status = excluded.status, abort_reason = excluded.abort_reason,
         initiated_here = excluded.initiated_here, abort_published = excluded.abort_published,
         compensation_acknowledged = excluded.compensation_acknowledged,
         abort_event = excluded.abort_event, recorded = 1, ",
    append_to_lists!()
);

/// A saga's record's own fields. The deadline is not written again: it never changes, and
/// writing it would rewrite its index entry too.
const UPDATE_SAGA: &str = concat!(
    "UPDATE choreo_sagas SET status = ?4, abort_reason = ?5, initiated_here = ?6,
         abort_published = ?7, compensation_acknowledged = ?8, abort_event = ?9, ",
    append_to_lists!(),
    " WHERE service = ?1 AND saga_id = ?2"
);

/// A handled event's id alone, in a row of inbox ids only if the service keeps no record of
/// the saga.
const RECORD_HANDLED: &str = concat!(
    "INSERT INTO choreo_sagas (service, saga_id, deadline, status, abort_reason,
         initiated_here, abort_published, compensation_acknowledged, abort_event, handled,
         unsent, recorded)
     VALUES (?1, ?2, ?3, 'active', NULL, 0, 0, 0, NULL, ?10, COALESCE(?12, ?11, ''), 0)
     ON CONFLICT (service, saga_id) DO UPDATE SET ",
    append_to_lists!()
);

/// Steps added to a saga whose row is written for nothing else.
const ADD_UNSENT: &str = concat!(
    "UPDATE choreo_sagas SET ",
    append_to_lists!(),
    " WHERE service = ?1 AND saga_id = ?2"
);

/// Applies one handling's changes. The caller holds the transaction. With `unsent`, the
/// steps of the saga whose output is still to be sent before it (positions separated by
/// spaces), the saga's row gets its whole list written rather than appended to.
pub(crate) fn apply(
    conn: &Connection,
    commit: &Commit,
    unsent: Option<String>,
) -> rusqlite::Result<()> {
    let (service, saga) = (commit.service.as_str(), commit.saga_id.to_string());
    // The saga's row takes the handled event's id and the positions of the steps whose
    // output is still to be sent, with its first write.
    let added = unsent_positions(commit);
    let mut lists = RowLists {
        handled: commit.handled.map(|handled| handled.event_id.to_string()),
        whole_unsent: unsent.map(|before| match &added {
            Some(added) if before.is_empty() => added.clone(),
            Some(added) => format!("{before} {added}"),
            None => before,
        }),
        unsent: added,
    };
    for change in &commit.changes {
        match change {
            JournalChange::Created(header) => {
                write_header(conn, CREATE_SAGA, service, &saga, header, lists.take())?;
            }
            JournalChange::Updated(header) => {
                write_header(conn, UPDATE_SAGA, service, &saga, header, lists.take())?;
            }
            JournalChange::StepAdded { position, step } => {
                let (compensation, error) = compensation(&step.compensation);
                conn.prepare_cached(
                    "INSERT INTO choreo_steps (service, saga_id, position, input_id, output,
                         withheld, compensation, compensation_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    service,
                    saga,
                    *position as i64,
                    step.input.map(|id| id.to_string()),
                    step.output.to_json(),
                    step.withheld,
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
    let RowLists {
        handled,
        unsent,
        whole_unsent,
    } = lists.take();
    if let (Some(record), Some(_)) = (&commit.handled, &handled) {
        conn.prepare_cached(RECORD_HANDLED)?
            .execute(named_params! {
                "?1": service,
                "?2": saga,
                "?3": nanos(record.deadline.instant()),
                "?10": handled,
                "?11": unsent,
                "?12": whole_unsent,
            })?;
    } else if unsent.is_some() || whole_unsent.is_some() {
        conn.prepare_cached(ADD_UNSENT)?.execute(named_params! {
            "?1": service,
            "?2": saga,
            "?10": None::<String>,
            "?11": unsent,
            "?12": whole_unsent,
        })?;
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

/// What a handling adds to its saga row's lists, written with the row's first write.
#[derive(Default)]
struct RowLists {
    /// The id of the event handled.
    handled: Option<String>,
    /// The positions of the steps added whose output is to be sent.
    unsent: Option<String>,
    /// Every position whose output is to be sent, the steps added included, when known.
    whole_unsent: Option<String>,
}

impl RowLists {
    fn take(&mut self) -> Self {
        std::mem::take(self)
    }
}

/// The positions, separated by spaces, of the steps `commit` adds whose output is to be
/// sent; `None` if there are none.
fn unsent_positions(commit: &Commit) -> Option<String> {
    let added = commit.changes.iter().filter_map(|change| match change {
        JournalChange::StepAdded { position, step } => Some((*position, step)),
        _ => None,
    });
    Some(unsent_list(added)).filter(|positions| !positions.is_empty())
}

/// The `unsent` list of `steps` (position and step): the positions, separated by spaces, of
/// those whose output is to be sent.
pub(crate) fn unsent_list<'a>(steps: impl IntoIterator<Item = (usize, &'a StepRecord)>) -> String {
    let mut positions = String::new();
    for (position, step) in steps {
        if !step.published && !step.withheld {
            if !positions.is_empty() {
                positions.push(' ');
            }
            positions.push_str(&position.to_string());
        }
    }
    positions
}

/// Runs `sql`, which takes a saga's row as `?1` to `?9` and what to write to its lists as
/// `?10` to `?12`, for `header`.
fn write_header(
    conn: &Connection,
    sql: &str,
    service: &str,
    saga: &str,
    header: &SagaHeader,
    lists: RowLists,
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
        lists.handled,
        lists.unsent,
        lists.whole_unsent,
    ])
}

pub(crate) fn mark_sent(conn: &Connection, service: &str, sent: &[Sent]) -> rusqlite::Result<()> {
    for sent in sent {
        match sent.kind {
            SentKind::Step { position } => {
                conn.prepare_cached(
                    "UPDATE choreo_sagas
                     SET unsent = trim(replace(' ' || unsent || ' ', ' ' || ?3 || ' ', ' '))
                     WHERE service = ?1 AND saga_id = ?2",
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
         WHERE service = ?1 AND recorded = 1 AND status = 'active' AND abort_published = 0",
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
        "SELECT t.saga_id, t.position, t.output
         FROM choreo_sagas s JOIN choreo_steps t
             ON t.service = s.service AND t.saga_id = s.saga_id
         WHERE s.service = ?1 AND s.unsent <> ''
             AND instr(' ' || s.unsent || ' ', ' ' || t.position || ' ') > 0",
    )?;
    let mut rows = statement.query([service])?;
    while let Some(row) = rows.next()? {
        let saga: String = row.get(0)?;
        let position: i64 = row.get(1)?;
        let output: String = row.get(2)?;
        recovery.unsent.push(Outgoing {
            envelope: Arc::new(
                envelope(&output).map_err(|reason| ReadError::Corrupt { saga, reason })?,
            ),
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
            envelope: Arc::new(envelope(&json).map_err(|reason| ReadError::Corrupt {
                saga: saga.clone(),
                reason,
            })?),
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
    const FINISHED: &str = "service = ?1 AND deadline < ?2 AND recorded = 1
        AND (status = 'completed' OR (status = 'aborted' AND compensation_acknowledged = 1))";
    // Rows that go: finished sagas, and rows of inbox ids only.
    const GONE: &str = "service = ?1 AND deadline < ?2
        AND (recorded = 0 OR status = 'completed'
             OR (status = 'aborted' AND compensation_acknowledged = 1))";
    // Every id in `handled` is 36 characters, and one space separates two.
    const IDS: &str = "CASE handled WHEN '' THEN 0 ELSE (length(handled) + 1) / 37 END";
    let before = nanos(before);
    let parameters = params![service, before];
    conn.prepare_cached(&format!(
        "DELETE FROM choreo_steps WHERE service = ?1 AND saga_id IN
             (SELECT saga_id FROM choreo_sagas WHERE {FINISHED})"
    ))?
    .execute(parameters)?;
    let (sagas, mut handled): (i64, i64) = conn
        .prepare_cached(&format!(
            "SELECT COALESCE(sum(recorded), 0), COALESCE(sum({IDS}), 0)
             FROM choreo_sagas WHERE {GONE}"
        ))?
        .query_row(parameters, |row| Ok((row.get(0)?, row.get(1)?)))?;
    conn.prepare_cached(&format!("DELETE FROM choreo_sagas WHERE {GONE}"))?
        .execute(parameters)?;
    // The inbox ids of sagas kept (active, or aborted and not yet acknowledged) go too: their
    // deadline passed long ago, so no step of theirs runs again anyway.
    handled += conn
        .prepare_cached(&format!(
            "SELECT COALESCE(sum({IDS}), 0) FROM choreo_sagas
             WHERE service = ?1 AND deadline < ?2 AND handled <> ''"
        ))?
        .query_row(parameters, |row| row.get::<_, i64>(0))?;
    conn.prepare_cached(
        "UPDATE choreo_sagas SET handled = ''
         WHERE service = ?1 AND deadline < ?2 AND handled <> ''",
    )?
    .execute(parameters)?;
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

//! The view models of the pages and the API, gathered from the store: what every saga's
//! events say now.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use choreo_core::Clock;

use crate::error::MonitorError;
use crate::graph;
use crate::model::{
    DeadLetter, DeadLetterCopy, EventRecord, Graph, SagaDetail, SagaFilter, SagaList, Status,
};
use crate::status::{derive, redriven_at, StuckAfter};
use crate::store::{micros, MonitorStore, StoredDeadLetter, StoredEvent};
use crate::time::{parse_rfc3339, rfc3339};

/// The default length of the saga list.
const DEFAULT_LIMIT: usize = 200;
/// A dead letter's body shown up to this many bytes.
const BODY_SHOWN: usize = 64 * 1024;

/// Reads the store into view models.
#[derive(Clone)]
pub struct Views {
    pub(crate) store: MonitorStore,
    pub(crate) stuck_after: StuckAfter,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Views {
    /// The sagas that match `filter`, stuck first, then newest first, with counts per
    /// status of the sagas that match every other part of the filter.
    pub async fn sagas(&self, filter: &SagaFilter) -> Result<SagaList, MonitorError> {
        let now = micros(self.clock.now());
        let only: Option<HashSet<String>> = match filter.search.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => Some(
                self.store
                    .search(text.to_owned())
                    .await?
                    .into_iter()
                    .collect(),
            ),
            _ => None,
        };
        let events = self.store.saga_events(None).await?;
        let mut letters: BTreeMap<String, Vec<StoredDeadLetter>> = BTreeMap::new();
        for letter in self.store.dead_letters(None).await? {
            if let Some(saga) = letter.saga_id.clone() {
                letters.entry(saga).or_default().push(letter);
            }
        }
        let from = filter.from.as_deref().and_then(parse_rfc3339);
        let to = filter.to.as_deref().and_then(parse_rfc3339);
        let mut counts: BTreeMap<Status, usize> =
            Status::ALL.iter().map(|status| (*status, 0)).collect();
        let mut sagas = Vec::new();
        for saga_events in by_saga(&events) {
            let saga_id = saga_events[0].saga_id.as_str();
            if only.as_ref().is_some_and(|only| !only.contains(saga_id)) {
                continue;
            }
            let started = saga_events[0].time_us;
            if from.is_some_and(|from| started < from) || to.is_some_and(|to| started >= to) {
                continue;
            }
            let saga_letters = letters.get(saga_id).map(Vec::as_slice).unwrap_or_default();
            let derived = derive(saga_id, saga_events, saga_letters, now, self.stuck_after);
            *counts.entry(derived.summary.status).or_default() += 1;
            if filter
                .status
                .is_none_or(|status| status == derived.summary.status)
            {
                sagas.push((started, derived.summary));
            }
        }
        sagas.sort_by(|(a_started, a), (b_started, b)| {
            (b.status == Status::Stuck)
                .cmp(&(a.status == Status::Stuck))
                .then(b_started.cmp(a_started))
        });
        sagas.truncate(filter.limit.unwrap_or(DEFAULT_LIMIT));
        Ok(SagaList {
            counts: Status::ALL
                .iter()
                .map(|status| (*status, counts.get(status).copied().unwrap_or(0)))
                .collect(),
            sagas: sagas.into_iter().map(|(_, summary)| summary).collect(),
        })
    }

    /// One saga's page, if any event or dead letter of it was recorded.
    pub async fn saga(&self, saga_id: &str) -> Result<Option<SagaDetail>, MonitorError> {
        let now = micros(self.clock.now());
        let events = self
            .store
            .saga_events(Some(vec![saga_id.to_owned()]))
            .await?;
        let letters = self.store.dead_letters(Some(saga_id.to_owned())).await?;
        if events.is_empty() && letters.is_empty() {
            return Ok(None);
        }
        let derived = derive(saga_id, &events, &letters, now, self.stuck_after);
        let expected =
            if derived.summary.status.is_ended() || derived.summary.abort_reason.is_some() {
                Vec::new()
            } else {
                let descriptions = self.store.descriptions().await?;
                graph::expected(&graph::services(&descriptions), &events)
            };
        let start = events.first().map_or(now, |event| event.time_us);
        Ok(Some(SagaDetail {
            summary: derived.summary,
            participants: derived.participants,
            events: events
                .iter()
                .map(|event| event_record(event, start))
                .collect(),
            dead_letters: grouped(&letters, &events),
            expected,
        }))
    }

    /// Every dead letter, its copies grouped, newest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, MonitorError> {
        let letters = self.store.dead_letters(None).await?;
        let sagas: Vec<String> = letters
            .iter()
            .filter_map(|letter| letter.saga_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let events = self.store.saga_events(Some(sagas)).await?;
        let mut grouped = grouped(&letters, &events);
        grouped.reverse();
        Ok(grouped)
    }

    /// The choreography graph and its problems.
    pub async fn graph(&self) -> Result<Graph, MonitorError> {
        let descriptions = self.store.descriptions().await?;
        let seen = self.store.type_counts().await?;
        Ok(graph::graph(graph::services(&descriptions), &seen))
    }
}

/// `events` (sorted by saga) cut into one slice per saga.
fn by_saga(events: &[StoredEvent]) -> impl Iterator<Item = &[StoredEvent]> {
    events.chunk_by(|a, b| a.saga_id == b.saga_id)
}

fn event_record(event: &StoredEvent, start_us: i64) -> EventRecord {
    let json = |text: &str| {
        serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()))
    };
    EventRecord {
        id: event.id.clone(),
        saga_id: event.saga_id.clone(),
        event_type: event.event_type.clone(),
        source: event.source.clone(),
        kind: event.kind.clone(),
        time: rfc3339(event.time_us),
        offset_ms: (event.time_us - start_us) / 1000,
        causation_id: event.causation_id.clone(),
        deadline: rfc3339(event.deadline_us),
        traceparent: event.traceparent.clone(),
        data: json(&event.data),
        saga_data: json(&event.saga_data),
    }
}

/// Dead-letter copies grouped by message, in the order first recorded.
fn grouped(letters: &[StoredDeadLetter], events: &[StoredEvent]) -> Vec<DeadLetter> {
    let mut grouped: Vec<DeadLetter> = Vec::new();
    for letter in letters {
        let copy = DeadLetterCopy {
            service: (!letter.service.is_empty()).then(|| letter.service.clone()),
            reason: letter.reason.clone(),
            recorded_at: rfc3339(letter.recorded_us),
        };
        if let Some(known) = grouped
            .iter_mut()
            .find(|known| known.id == letter.message_id)
        {
            known.copies.push(copy);
            continue;
        }
        let mut body = String::from_utf8_lossy(&letter.message.body).into_owned();
        if body.len() > BODY_SHOWN {
            let mut cut = BODY_SHOWN;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        grouped.push(DeadLetter {
            id: letter.message_id.clone(),
            saga_id: letter.saga_id.clone(),
            event_type: letter.event_type.clone(),
            source: letter.source.clone(),
            topic: letter.topic.clone(),
            copies: vec![copy],
            body,
            redriven_at: redriven_at(&letter.message_id, letters, events).map(rfc3339),
        });
    }
    grouped
}

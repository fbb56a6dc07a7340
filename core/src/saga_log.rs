//! An observer of a saga topic: records every event per saga and tells each saga's outcome.
//! What a test asserts on and what the example prints its timelines from.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::ServiceDescribed;
use crate::envelope::{Envelope, SagaKind};
use crate::event::Event;
use crate::ids::SagaId;
use crate::journal::AbortReason;
use crate::saga::{Saga, SagaAborted, SagaCompensated};
use crate::transport::{Transport, TransportError};

/// How a saga ended, as seen on its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// A terminal event was published and no abort.
    Completed,
    /// An abort was published and every expected participant acknowledged its compensation.
    Compensated {
        /// Why the saga aborted (the first abort's reason).
        reason: AbortReason,
        /// Step events whose compensation failed and was dead-lettered.
        failed: Vec<String>,
    },
}

/// Records the events of every saga on one topic, in the order it received them, as an
/// observer of its own, so it sees every event and takes none from services.
pub struct SagaLog {
    inner: Arc<LogInner>,
    changed: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

struct LogInner {
    events: Mutex<HashMap<SagaId, Vec<Envelope>>>,
    changed: watch::Sender<u64>,
}

/// A saga that did not end within the time [`SagaLog::wait_for_outcome`] or
/// [`SagaLog::wait_for_end`] was given: who it still waits for, and every event of it seen
/// so far. (The participants `wait_for_end` learns all sent events, so none is `never_seen`.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct NotEnded {
    /// The saga.
    pub saga: SagaId,
    /// How long it was waited for.
    pub waited: Duration,
    /// Whether an abort was seen: then the saga waits for acknowledgements.
    pub aborted: bool,
    /// After an abort, the participants whose acknowledgement has not been seen.
    pub unacknowledged: Vec<String>,
    /// Participants no event on the topic ever came from, of any saga: often a misspelt
    /// name.
    pub never_seen: Vec<String>,
    /// The services events on the topic came from.
    pub seen: Vec<String>,
    /// The saga's events so far, one line each (see [`SagaLog::timeline`]).
    pub timeline: String,
}

/// What [`SagaLog::published`] or [`SagaLog::consumed_by`] waited for did not happen in
/// time, or the event's data was not the type asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga}: no {what} within {waited:?}; its events:\n{timeline}")]
pub struct NotSeen {
    /// The saga.
    pub saga: SagaId,
    /// What was waited for, for people.
    pub what: String,
    /// How long.
    pub waited: Duration,
    /// The saga's events so far, one line each.
    pub timeline: String,
}

impl NotEnded {
    fn describe(&self) -> String {
        let mut out = format!("saga {} did not end within {:?}", self.saga, self.waited);
        if self.timeline.is_empty() {
            out.push_str("; no event of it was seen");
        } else if self.aborted {
            let _ = write!(
                out,
                "; aborted, no acknowledgement yet from {}",
                self.unacknowledged.join(", ")
            );
        } else {
            out.push_str("; neither completed nor aborted");
        }
        if !self.never_seen.is_empty() {
            let _ = write!(
                out,
                "; no event on the topic ever came from {} (events came from {}): a misspelt participant?",
                self.never_seen.join(", "),
                self.seen.join(", ")
            );
        }
        if !self.timeline.is_empty() {
            let _ = write!(out, "; its events:\n{}", self.timeline);
        }
        out
    }
}

impl SagaLog {
    /// Starts recording `saga`'s topic as observer `name`
    /// ([`Transport::observe`]): it sees every event and takes none from the services. On
    /// RabbitMQ and in memory nothing is kept for it once the log is dropped; on Kafka, its
    /// group's offsets.
    pub async fn start(
        transport: Arc<dyn Transport>,
        saga: &Saga,
        name: &str,
    ) -> Result<Self, TransportError> {
        let mut subscription = transport.observe(name, &[saga.topic().to_owned()]).await?;
        let (changed, receiver) = watch::channel(0);
        let inner = Arc::new(LogInner {
            events: Mutex::new(HashMap::new()),
            changed,
        });
        let recorder = Arc::clone(&inner);
        let task = tokio::spawn(async move {
            loop {
                let delivery = match subscription.next().await {
                    Ok(delivery) => delivery,
                    Err(TransportError::Closed) => return,
                    Err(error) => {
                        tracing::warn!(%error, "saga log cannot receive; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // An observer has no business with malformed events: services dead-letter them.
                // A service's description is no saga's event: it comes in a saga of its own.
                if let Some(envelope) = Envelope::decode(&delivery.message)
                    .ok()
                    .filter(|envelope| envelope.event_type != ServiceDescribed::TYPE)
                {
                    recorder
                        .lock()
                        .entry(envelope.saga_id)
                        .or_default()
                        .push(envelope);
                    recorder.changed.send_modify(|version| *version += 1);
                }
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(%error, "saga log cannot ack");
                }
            }
        });
        Ok(Self {
            inner,
            changed: receiver,
            task,
        })
    }

    /// Every event of `saga` received so far, in order.
    pub fn events(&self, saga: SagaId) -> Vec<Envelope> {
        self.inner.lock().get(&saga).cloned().unwrap_or_default()
    }

    /// `(source, type)` of every event of `saga` so far: the flow at a glance.
    pub fn flow(&self, saga: SagaId) -> Vec<(String, String)> {
        self.events(saga)
            .into_iter()
            .map(|event| (event.source, event.event_type))
            .collect()
    }

    /// The ids of the sagas seen so far, in no particular order.
    pub fn sagas(&self) -> Vec<SagaId> {
        self.inner.lock().keys().copied().collect()
    }

    /// The saga's outcome if it has ended, given the services expected to acknowledge an
    /// abort.
    pub fn outcome(&self, saga: SagaId, participants: &[&str]) -> Option<SagaOutcome> {
        outcome_of(&self.events(saga), participants)
    }

    /// Waits up to `timeout` for the saga to end (see [`outcome`](Self::outcome)). If it
    /// does not, the error says what it still waits for (which participants have not
    /// acknowledged an abort, which were never heard from at all) and shows its events.
    pub async fn wait_for_outcome(
        &self,
        saga: SagaId,
        participants: &[&str],
        timeout: Duration,
    ) -> Result<SagaOutcome, NotEnded> {
        let ended = self.recorded(|| self.outcome(saga, participants));
        match tokio::time::timeout(timeout, ended).await {
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(self.not_ended(saga, participants, timeout)),
        }
    }

    /// The saga's outcome if it has ended, with the participants learned from its events:
    /// every service that published an event of the saga, but for acknowledgements, must
    /// acknowledge an abort (every service that did a step, started the saga or decided
    /// the abort). A participant whose event never reached the topic is not waited for: a
    /// step that finished past the deadline (its event is withheld) or that raced the
    /// abort. A saga that can time out, or one with events from outside any service (a
    /// test's own), needs the participants named: [`outcome`](Self::outcome).
    pub fn ended(&self, saga: SagaId) -> Option<SagaOutcome> {
        let events = self.events(saga);
        outcome_of(&events, &participants_of(&events))
    }

    /// Waits up to `timeout` for the saga to end (see [`ended`](Self::ended)), with the
    /// participants learned from its events. If it does not, the error says which of them
    /// have not acknowledged an abort, and shows its events.
    pub async fn wait_for_end(
        &self,
        saga: SagaId,
        timeout: Duration,
    ) -> Result<SagaOutcome, NotEnded> {
        let ended = self.recorded(|| self.ended(saga));
        match tokio::time::timeout(timeout, ended).await {
            Ok(outcome) => Ok(outcome),
            Err(_) => {
                let events = self.events(saga);
                Err(self.not_ended(saga, &participants_of(&events), timeout))
            }
        }
    }

    fn not_ended(&self, saga: SagaId, participants: &[&str], waited: Duration) -> NotEnded {
        let (events, seen) = {
            let all = self.inner.lock();
            let seen: std::collections::BTreeSet<String> = all
                .values()
                .flatten()
                .map(|event| event.source.clone())
                .collect();
            (all.get(&saga).cloned().unwrap_or_default(), seen)
        };
        let acknowledged: Vec<String> = acknowledgements(&events).map(|ack| ack.service).collect();
        let missing = |names: &dyn Fn(&str) -> bool| {
            participants
                .iter()
                .filter(|participant| !names(participant))
                .map(|participant| (*participant).to_owned())
                .collect::<Vec<_>>()
        };
        let never_seen = missing(&|name| seen.contains(name));
        NotEnded {
            saga,
            waited,
            aborted: events.iter().any(|event| event.kind == SagaKind::Abort),
            unacknowledged: missing(&|name| acknowledged.iter().any(|ack| ack == name)),
            never_seen,
            seen: seen.into_iter().collect(),
            timeline: self.timeline(saga),
        }
    }

    /// Waits up to `timeout` for the saga's first event of type `E`, and returns its data.
    pub async fn published<E: Event>(&self, saga: SagaId, timeout: Duration) -> Result<E, NotSeen> {
        let what = || format!("a `{}`", E::TYPE);
        let event = self
            .first_within(saga, timeout, what, |event, _| event.event_type == E::TYPE)
            .await?;
        self.decoded(saga, &event, what)
    }

    /// Waits up to `timeout` until `service` has consumed an event of type `E` of the saga,
    /// as the topic shows it: `service` published an event caused by it (the step's output,
    /// or the abort the step decided). Returns the consumed event's data. A step that ends
    /// without publishing anything leaves no trace on the topic.
    pub async fn consumed_by<E: Event>(
        &self,
        saga: SagaId,
        service: &str,
        timeout: Duration,
    ) -> Result<E, NotSeen> {
        let what = || format!("`{service}` consuming a `{}`", E::TYPE);
        let event = self
            .first_within(saga, timeout, what, |event, events| {
                event.event_type == E::TYPE
                    && events.iter().any(|reply| {
                        reply.source == service && reply.causation_id == Some(event.id)
                    })
            })
            .await?;
        self.decoded(saga, &event, what)
    }

    /// The saga's first event for which `matches` holds, within `timeout`.
    async fn first_within(
        &self,
        saga: SagaId,
        timeout: Duration,
        what: impl Fn() -> String,
        matches: impl Fn(&Envelope, &[Envelope]) -> bool,
    ) -> Result<Envelope, NotSeen> {
        let found = self.recorded(|| {
            let events = self.events(saga);
            events.iter().find(|event| matches(event, &events)).cloned()
        });
        tokio::time::timeout(timeout, found)
            .await
            .map_err(|_| self.not_seen(saga, what(), timeout))
    }

    /// The data of `event`, or why it is not an `E`.
    fn decoded<E: Event>(
        &self,
        saga: SagaId,
        event: &Envelope,
        what: impl Fn() -> String,
    ) -> Result<E, NotSeen> {
        serde_json::from_str(event.data.get()).map_err(|error| {
            let what = format!("{} with data that decodes ({error})", what());
            self.not_seen(saga, what, Duration::ZERO)
        })
    }

    fn not_seen(&self, saga: SagaId, what: String, waited: Duration) -> NotSeen {
        NotSeen {
            saga,
            what,
            waited,
            timeline: self.timeline(saga),
        }
    }

    /// Waits until `condition` holds for the saga's events.
    pub async fn wait_until(&self, saga: SagaId, condition: impl Fn(&[Envelope]) -> bool) {
        self.recorded(|| condition(&self.events(saga)).then_some(()))
            .await;
    }

    /// Waits until `check` finds what it looks for in what was recorded, looking again after
    /// every event recorded.
    async fn recorded<T>(&self, check: impl Fn() -> Option<T>) -> T {
        let mut changed = self.changed.clone();
        loop {
            if let Some(found) = check() {
                return found;
            }
            if changed.changed().await.is_err() {
                // The recorder is gone; nothing more will arrive.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A readable timeline of the saga: one line per event, times relative to its start.
    pub fn timeline(&self, saga: SagaId) -> String {
        let events = self.events(saga);
        let Some(start) = events.first().map(|event| event.time) else {
            return String::new();
        };
        let mut out = String::new();
        for event in &events {
            let offset = event.time.duration_since(start).unwrap_or_default();
            let _ = write!(
                out,
                "  +{:>6.3}s  {:<10} {:<12} {}",
                offset.as_secs_f64(),
                event.source,
                event.kind.as_str(),
                event.event_type
            );
            let _ = writeln!(out, "{}", describe(event));
        }
        out
    }
}

impl Drop for SagaLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LogInner {
    fn lock(&self) -> MutexGuard<'_, HashMap<SagaId, Vec<Envelope>>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn outcome_of(events: &[Envelope], participants: &[&str]) -> Option<SagaOutcome> {
    let abort = events.iter().find(|event| event.kind == SagaKind::Abort);
    if let Some(abort) = abort {
        let reason = serde_json::from_str::<SagaAborted>(abort.data.get())
            .map(|aborted| aborted.reason)
            .ok()?;
        // A participant that retried failed compensations acknowledged again: its latest
        // acknowledgement says what still failed.
        let mut acknowledgements: Vec<SagaCompensated> = Vec::new();
        for ack in self::acknowledgements(events) {
            match acknowledgements
                .iter_mut()
                .find(|seen| seen.service == ack.service)
            {
                Some(seen) => *seen = ack,
                None => acknowledgements.push(ack),
            }
        }
        let all_acknowledged = participants.iter().all(|participant| {
            acknowledgements
                .iter()
                .any(|ack| ack.service == *participant)
        });
        return all_acknowledged.then(|| SagaOutcome::Compensated {
            reason,
            failed: acknowledgements
                .into_iter()
                .flat_map(|ack| ack.failed)
                .collect(),
        });
    }
    events
        .iter()
        .any(|event| event.kind == SagaKind::Complete)
        .then_some(SagaOutcome::Completed)
}

/// The services that published `events`, acknowledgements aside, in order of appearance.
fn participants_of(events: &[Envelope]) -> Vec<&str> {
    let mut participants: Vec<&str> = Vec::new();
    for event in events {
        if event.kind != SagaKind::Compensated && !participants.contains(&event.source.as_str()) {
            participants.push(&event.source);
        }
    }
    participants
}

/// The acknowledgements among `events`.
fn acknowledgements(events: &[Envelope]) -> impl Iterator<Item = SagaCompensated> + '_ {
    events
        .iter()
        .filter(|event| event.kind == SagaKind::Compensated)
        .filter_map(|event| serde_json::from_str(event.data.get()).ok())
}

fn describe(event: &Envelope) -> String {
    match event.kind {
        SagaKind::Abort => serde_json::from_str::<SagaAborted>(event.data.get())
            .map(|aborted| format!("  ({}: {})", aborted.reason, aborted.detail))
            .unwrap_or_default(),
        SagaKind::Compensated => serde_json::from_str::<SagaCompensated>(event.data.get())
            .map(|ack| {
                let undone = if ack.compensated.is_empty() {
                    "nothing to undo".to_owned()
                } else {
                    format!("undid {}", ack.compensated.join(", "))
                };
                if ack.failed.is_empty() {
                    format!("  ({undone})")
                } else {
                    format!("  ({undone}; FAILED {})", ack.failed.join(", "))
                }
            })
            .unwrap_or_default(),
        _ => format!("  {}", event.data.get()),
    }
}

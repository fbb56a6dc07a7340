//! Sending what a handling recorded, once it is committed: at once, and again from the
//! store's outbox until the broker takes it. Each event sent is marked so, in batches.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn, Instrument, Span};

use super::runtime::Runtime;
use crate::store::{Outgoing, OutgoingKind, Sent};
use crate::transport::TransportError;

/// The longest wait between two attempts to send what the broker refused.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The most events marked sent in one store call.
const MARK_BATCH: usize = 512;

/// What the runtime has still to send, and the sent events still to mark.
pub(super) struct Outbox {
    unsent: Mutex<Unsent>,
    /// Whether the store may hold unsent events the runtime does not know of: a commit
    /// failed in a way that may have committed all the same.
    rescan: AtomicBool,
    more: Notify,
    marks: mpsc::UnboundedSender<Sent>,
    marks_out: tokio::sync::Mutex<mpsc::UnboundedReceiver<Sent>>,
}

impl Default for Outbox {
    fn default() -> Self {
        let (marks, marks_out) = mpsc::unbounded_channel();
        Self {
            unsent: Mutex::default(),
            rescan: AtomicBool::new(false),
            more: Notify::new(),
            marks,
            marks_out: tokio::sync::Mutex::new(marks_out),
        }
    }
}

/// The relay's queue: each event once, however often the store or a take-over hands it
/// back while it waits (a broker that is down for long keeps it waiting).
#[derive(Default)]
struct Unsent {
    queue: VecDeque<Outgoing>,
    queued: HashSet<Sent>,
}

impl Unsent {
    fn push_back(&mut self, outgoing: Outgoing) {
        if self.queued.insert(outgoing.sent()) {
            self.queue.push_back(outgoing);
        }
    }

    fn push_front(&mut self, outgoing: Outgoing) {
        if self.queued.insert(outgoing.sent()) {
            self.queue.push_front(outgoing);
        }
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        let outgoing = self.queue.pop_front()?;
        self.queued.remove(&outgoing.sent());
        Some(outgoing)
    }
}

impl Outbox {
    /// Queues `outgoing` for the relay, but what it holds already.
    pub(super) fn retry(&self, outgoing: impl IntoIterator<Item = Outgoing>) {
        let mut unsent = self.lock();
        for outgoing in outgoing {
            unsent.push_back(outgoing);
        }
        drop(unsent);
        self.more.notify_one();
    }

    /// Has the relay read the store's unsent events again: after a commit whose outcome
    /// is not known (the connection broke as it committed), its events may be there while
    /// the redelivery of its event is recognised as handled.
    pub(super) fn rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
        self.more.notify_one();
    }

    fn sent(&self, sent: Sent) {
        // The receiver lives as long as `self`.
        let _ = self.marks.send(sent);
    }

    fn lock(&self) -> MutexGuard<'_, Unsent> {
        self.unsent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Runtime {
    /// Sends what a committed handling recorded, each inside its producer span. What the
    /// broker refuses stays in the store and goes to the relay.
    pub(super) async fn send(&self, outgoing: Vec<(Outgoing, Span)>) {
        for (outgoing, span) in outgoing {
            if let Err(outgoing) = self.deliver(outgoing).instrument(span).await {
                self.outbox().retry([outgoing]);
            }
        }
    }

    /// Publishes or dead-letters `outgoing`; marks it sent, or hands it back.
    async fn deliver(&self, outgoing: Outgoing) -> Result<(), Outgoing> {
        let sent = outgoing.sent();
        let topic = self.saga().topic();
        let result = match outgoing.kind {
            OutgoingKind::Step { .. } | OutgoingKind::Event => self
                .transport()
                .publish_shared(topic, &outgoing.envelope)
                .await
                .map_err(|error| (outgoing, error)),
            OutgoingKind::DeadLetter { reason } => {
                let mut message = outgoing.envelope.to_binary();
                self.mark_dead_letter(&mut message, Some(outgoing.envelope.saga_id));
                match self.transport().dead_letter(topic, message, &reason).await {
                    Ok(()) => Ok(()),
                    Err(error) => Err((
                        Outgoing {
                            envelope: outgoing.envelope,
                            kind: OutgoingKind::DeadLetter { reason },
                        },
                        error,
                    )),
                }
            }
        };
        match result {
            Ok(()) => {
                self.outbox().sent(sent);
                Ok(())
            }
            Err((outgoing, error)) => {
                self.warn_unsent(&outgoing, &error);
                Err(outgoing)
            }
        }
    }

    fn warn_unsent(&self, outgoing: &Outgoing, error: &TransportError) {
        warn!(
            service = %self.name(), saga_id = %outgoing.envelope.saga_id,
            event_type = %outgoing.envelope.event_type, %error,
            "cannot send now; it stays in the store and is sent again"
        );
    }

    /// Sends again, oldest first, what the broker refused or a restart found unsent,
    /// waiting longer after each failure, until stopped.
    pub(super) async fn relay(self: Arc<Self>) {
        let mut wait = self.options().redelivery_delay;
        loop {
            if self.outbox().rescan.swap(false, Ordering::SeqCst) {
                match self.store().recover(self.name()).await {
                    Ok(recovery) => self.outbox().retry(oldest_first(recovery.unsent)),
                    Err(error) => {
                        warn!(service = %self.name(), %error, "cannot read the unsent events; trying again");
                        self.outbox().rescan.store(true, Ordering::SeqCst);
                        tokio::select! {
                            () = self.stopped() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                }
            }
            let next = self.outbox().lock().pop_front();
            let Some(outgoing) = next else {
                tokio::select! {
                    () = self.stopped() => return,
                    () = self.outbox().more.notified() => continue,
                }
            };
            let span = self.send_span(&outgoing.envelope);
            match self.deliver(outgoing).instrument(span).await {
                Ok(()) => wait = self.options().redelivery_delay,
                Err(outgoing) => {
                    self.outbox().lock().push_front(outgoing);
                    tokio::select! {
                        () = self.stopped() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_RETRY_WAIT);
                }
            }
        }
    }

    /// Marks sent events in the store, in batches, until the workers are done.
    pub(super) async fn mark_sent(self: Arc<Self>) {
        let mut marks = self.outbox().marks_out.lock().await;
        let mut batch = Vec::with_capacity(MARK_BATCH);
        loop {
            let received = tokio::select! {
                biased;
                received = marks.recv_many(&mut batch, MARK_BATCH) => received,
                () = self.drained() => {
                    // Leaving: what the workers sent last is marked too.
                    while let Ok(sent) = marks.try_recv() {
                        batch.push(sent);
                    }
                    self.write_marks(&mut batch).await;
                    return;
                }
            };
            if received == 0 {
                return;
            }
            self.write_marks(&mut batch).await;
        }
    }

    async fn write_marks(&self, batch: &mut Vec<Sent>) {
        if batch.is_empty() {
            return;
        }
        match self.store().mark_sent(self.name(), batch).await {
            Ok(()) => debug!(service = %self.name(), marked = batch.len(), "marked sent"),
            // Unmarked, they are sent once more after a restart: harmless duplicates.
            Err(error) => {
                warn!(service = %self.name(), %error, "cannot mark events sent; a restart sends them again")
            }
        }
        batch.clear();
    }
}

/// `unsent` in the order it was recorded: event ids are time-ordered (UUID v7).
pub(super) fn oldest_first(mut unsent: Vec<Outgoing>) -> Vec<Outgoing> {
    unsent.sort_by_key(|outgoing| outgoing.envelope.id);
    unsent
}

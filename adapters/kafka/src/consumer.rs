//! One consumer group membership: a poll task that buffers fetched messages, hands them out in
//! per-saga order, and commits each partition up to its oldest unacked offset.
//!
//! A partition's offsets are taken in sequence, from the group's committed offset on. A broker
//! that shows an offset before an earlier one is readable (tansu 0.6's memory storage does,
//! while two producers append to one partition) would otherwise make the member skip the
//! earlier message for good: a fetched offset past the next one expected is dropped and the
//! partition fetched again from the expected offset, until the gap fills or
//! `offset.gap.wait.ms` passes (a gap Kafka itself leaves, such as a transaction marker, stays).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use choreo_core::transport::{Acknowledge, SharedKeyedQueue};
use choreo_core::{Delivery, RawMessage, Subscription, TransportError};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{scrub, Inner};

/// Messages fetched and not handed out beyond this pause fetching.
const MAX_BUFFERED: usize = 10_000;

/// How long a member waits before it fetches a skipped offset once more. The poll task waits:
/// fetching and commits of the member's other partitions pause as long.
const GAP_RECHECK: Duration = Duration::from_millis(25);

/// How long a member waits for the group's committed offsets of partitions it was assigned.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// A fetched message until it is acked.
#[derive(Debug)]
struct Pending {
    topic: String,
    partition: i32,
    offset: i64,
    message: RawMessage,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// Offsets fetched and not acked.
    unacked: BTreeSet<i64>,
    /// The offset expected next: one past the highest offset taken, or the group's committed
    /// offset before any.
    next: i64,
    /// The offset last committed.
    committed: i64,
    /// Since when the broker has been skipping `next`.
    gap_since: Option<Instant>,
}

/// What a member does with an offset it fetched.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Buffer it.
    Take,
    /// Drop it and fetch the partition again from the offset given (after a pause when
    /// `again`: the broker skipped it before).
    Refetch { from: i64, again: bool },
}

impl PartitionState {
    /// A partition whose next offset is `offset`, committed up to it.
    fn expecting(offset: i64) -> Self {
        Self {
            next: offset,
            committed: offset,
            ..Self::default()
        }
    }

    /// `offset` is buffered until it is acked.
    fn took(&mut self, offset: i64) {
        self.unacked.insert(offset);
        self.next = self.next.max(offset + 1);
    }

    /// Whether `offset`, fetched at `now`, comes in sequence; a gap before it is fetched
    /// again for `patience` from when it was first seen, then taken as the broker's.
    fn admit(&mut self, offset: i64, now: Instant, patience: Duration) -> Admit {
        if offset <= self.next || patience.is_zero() {
            self.gap_since = None;
            return Admit::Take;
        }
        match self.gap_since {
            Some(since) if now.duration_since(since) >= patience => {
                self.gap_since = None;
                Admit::Take
            }
            Some(_) => Admit::Refetch {
                from: self.next,
                again: true,
            },
            None => {
                self.gap_since = Some(now);
                Admit::Refetch {
                    from: self.next,
                    again: false,
                }
            }
        }
    }
}

/// A message fetched after an offset the broker skipped: its partition is to be fetched again
/// from that offset.
struct Refetch {
    key: Option<Arc<str>>,
    pending: Pending,
    from: i64,
    again: bool,
}

impl Refetch {
    /// Moves the partition's fetch position back to the skipped offset; the message is taken
    /// after all when that cannot be done.
    async fn run(self, consumer: &StreamConsumer<RebalanceContext>, shared: &Shared) {
        if self.again {
            tokio::time::sleep(GAP_RECHECK).await;
        }
        let (topic, partition) = (&self.pending.topic, self.pending.partition);
        // Zero: the seek happens in the background, and librdkafka drops what it had fetched
        // of the partition beyond it.
        if let Err(error) = consumer.seek(
            topic,
            partition,
            Offset::Offset(self.from),
            Timeout::After(Duration::ZERO),
        ) {
            tracing::warn!(%topic, partition, offset = self.from, %error, "cannot fetch a skipped offset again; going on after it");
            shared.take(self.key, self.pending);
        }
    }
}

/// State shared by the subscription, its deliveries, the poll task and the rebalance callback.
#[derive(Default)]
struct Shared {
    queue: SharedKeyedQueue<Pending>,
    /// Fewer messages wait: one was handed out, or a revoke dropped some. The poll task
    /// waits for it while the buffer is full; acks and requeues never lower the count.
    drained: Notify,
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
    /// Whether the group gave this member its (possibly empty) share of partitions yet.
    joined: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn partitions(&self) -> MutexGuard<'_, HashMap<(String, i32), PartitionState>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers `message`, unless it comes after an offset the broker skipped: then the
    /// partition is to be fetched again from there.
    fn fetched(&self, message: &BorrowedMessage<'_>, patience: Duration) -> Option<Refetch> {
        let topic = message.topic().to_owned();
        let partition = message.partition();
        let offset = message.offset();
        tracing::debug!(%topic, partition, offset, "fetched");
        let mut headers = choreo_core::Headers::new();
        if let Some(borrowed) = message.headers() {
            for header in borrowed.iter() {
                headers.push(header.key, header.value.unwrap_or_default());
            }
        }
        let key = message
            .key()
            .map(|key| Arc::<str>::from(String::from_utf8_lossy(key).as_ref()));
        let pending = Pending {
            topic,
            partition,
            offset,
            message: RawMessage {
                headers,
                body: message.payload().unwrap_or_default().to_vec(),
            },
            deliveries: 0,
        };
        let admitted = {
            let mut partitions = self.partitions();
            let state = partitions
                .entry((pending.topic.clone(), partition))
                .or_insert_with(|| PartitionState::expecting(offset));
            let expected = state.next;
            let admitted = state.admit(offset, Instant::now(), patience);
            if admitted == Admit::Take {
                if offset > expected {
                    tracing::warn!(topic = %pending.topic, partition, skipped = ?(expected..offset), "the broker never showed these offsets; going on after them");
                }
                state.took(offset);
            }
            admitted
        };
        match admitted {
            Admit::Take => {
                self.queue.update(|queue| queue.push(key, pending));
                None
            }
            Admit::Refetch { from, again } => {
                tracing::debug!(topic = %pending.topic, partition, offset, expected = from, "an offset was skipped; fetching it again");
                Some(Refetch {
                    key,
                    pending,
                    from,
                    again,
                })
            }
        }
    }

    /// Buffers a fetched message after all, though it came after a skipped offset.
    fn take(&self, key: Option<Arc<str>>, pending: Pending) {
        self.partitions()
            .entry((pending.topic.clone(), pending.partition))
            .or_insert_with(|| PartitionState::expecting(pending.offset))
            .took(pending.offset);
        self.queue.update(|queue| queue.push(key, pending));
    }

    /// Expects each partition of `committed` from its committed offset on, so that even the
    /// first offset fetched after an assignment is checked for a gap.
    fn expect(&self, committed: &TopicPartitionList) {
        let mut partitions = self.partitions();
        for element in committed.elements() {
            if let Offset::Offset(offset) = element.offset() {
                partitions.insert(
                    (element.topic().to_owned(), element.partition()),
                    PartitionState::expecting(offset),
                );
            }
        }
    }

    fn acked(&self, key: Option<&Arc<str>>, pending: &Pending) {
        if let Some(state) = self
            .partitions()
            .get_mut(&(pending.topic.clone(), pending.partition))
        {
            state.unacked.remove(&pending.offset);
        }
        self.queue.settle(key);
    }

    fn returned(&self, key: Option<Arc<str>>, mut pending: Pending) {
        pending.deliveries += 1;
        self.queue.update(|queue| queue.requeue(key, pending));
    }

    /// Offsets safe to commit: each partition up to its oldest unacked offset.
    fn committable(&self, only: Option<&TopicPartitionList>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), state) in self.partitions().iter_mut() {
            if only.is_some_and(|only| only.find_partition(topic, *partition).is_none()) {
                continue;
            }
            let safe = state.unacked.first().copied().unwrap_or(state.next);
            if safe > state.committed
                && list
                    .add_partition_offset(topic, *partition, Offset::Offset(safe))
                    .is_ok()
            {
                state.committed = safe;
            }
        }
        list
    }

    /// Forgets revoked partitions: their waiting messages go to the partitions' next owner.
    fn revoke(&self, revoked: &TopicPartitionList) {
        tracing::debug!(?revoked, "partitions revoked");
        let is_revoked =
            |topic: &str, partition: i32| revoked.find_partition(topic, partition).is_some();
        self.partitions()
            .retain(|(topic, partition), _| !is_revoked(topic, *partition));
        self.queue
            .update(|queue| queue.retain(|pending| !is_revoked(&pending.topic, pending.partition)));
        self.drained.notify_waiters();
    }
}

/// Commits before partitions are taken away, so their next owner starts after what was
/// handled here.
struct RebalanceContext {
    shared: Arc<Shared>,
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let offsets = self.shared.committable(Some(revoked));
            if offsets.count() > 0 {
                if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                    tracing::warn!(%error, "cannot commit offsets of revoked partitions");
                }
            }
            self.shared.revoke(revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::debug!(partitions = assigned.count(), "joined the consumer group");
            // Without them, the first offset fetched of each partition is taken as it comes.
            match consumer.committed_offsets((*assigned).clone(), COMMITTED_TIMEOUT) {
                Ok(committed) => self.shared.expect(&committed),
                Err(error) => {
                    tracing::debug!(%error, "cannot read the group's committed offsets")
                }
            }
            self.shared.joined.send_replace(true);
        }
    }
}

/// The members of each consumer group that this client is taking out of their group. A new
/// member of a group joins once they have left, or after [`CLOSE_TIMEOUT`]: a service started
/// again in the same process, right after it stopped or was killed, then causes one
/// rebalance, not a join followed by a leave. (tansu 0.6, the Kafka-protocol broker of the
/// test kit, keeps a member that leaves while another joins as the group's leader, and never
/// assigns the group's partitions again.)
#[derive(Default)]
pub(crate) struct Leaving {
    /// Per group, whether each member taken out has left (true, or its sender gone).
    groups: Mutex<HashMap<String, Vec<watch::Receiver<bool>>>>,
}

impl Leaving {
    fn groups(&self) -> MutexGuard<'_, HashMap<String, Vec<watch::Receiver<bool>>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A member of `group` is being taken out; `left` turns true once it has left.
    fn add(&self, group: &str, left: watch::Receiver<bool>) {
        let mut groups = self.groups();
        let members = groups.entry(group.to_owned()).or_default();
        members.retain(still_leaving);
        members.push(left);
    }

    /// Waits until the members of `group` being taken out have left, for at most `patience`.
    /// Each member starting waits for all of them, the others starting too.
    async fn wait(&self, group: &str, patience: Duration) {
        let members = match self.groups().get_mut(group) {
            Some(members) => {
                members.retain(still_leaving);
                members.clone()
            }
            None => return,
        };
        let all_left = async {
            for mut left in members {
                // An error: the poll task is gone, and its consumer with it.
                let _ = left.wait_for(|left| *left).await;
            }
        };
        if tokio::time::timeout(patience, all_left).await.is_err() {
            tracing::warn!(%group, ?patience, "a member of the group is still leaving it; joining all the same");
        }
    }
}

/// The poll task's consumer. However it goes (closed on its thread, or dropped with the task
/// or with the closing thread that could not start), the consumer closes first (its last
/// commit and its leave), and then `_has_left` says so: fields drop in order.
struct Member {
    consumer: StreamConsumer<RebalanceContext>,
    _has_left: HasLeft,
}

/// Turns its watch true when dropped.
struct HasLeft(watch::Sender<bool>);

impl Drop for HasLeft {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Whether the member whose leave `left` tells has not left yet.
fn still_leaving(left: &watch::Receiver<bool>) -> bool {
    !*left.borrow() && left.has_changed().is_ok()
}

/// A consumer group membership.
pub(crate) struct KafkaSubscription {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    group: String,
    /// Turns true once the consumer has left the group.
    left: watch::Receiver<bool>,
}

impl KafkaSubscription {
    /// Joins `group` on `topics` and waits (up to twice the session timeout) until the group
    /// assigned this member its partitions, so that a service is consuming once `subscribe`
    /// returns. Members of the group that this client is taking out leave it first: that
    /// waits up to [`CLOSE_TIMEOUT`] more.
    pub(crate) async fn start(
        inner: Arc<Inner>,
        group: &str,
        topics: &[String],
    ) -> Result<Self, TransportError> {
        inner.leaving.wait(group, CLOSE_TIMEOUT).await;
        let shared = Arc::new(Shared::default());
        let context = RebalanceContext {
            shared: Arc::clone(&shared),
        };
        let consumer: StreamConsumer<RebalanceContext> = inner
            .config
            .consumer(group)
            .create_with_context(context)
            .map_err(|error| TransportError::Connection(scrub(error, &inner.config)))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|error| TransportError::Refused(scrub(error, &inner.config)))?;
        let stop = CancellationToken::new();
        let mut joined = shared.joined.subscribe();
        let (has_left, left) = watch::channel(false);
        let member = Member {
            consumer,
            _has_left: HasLeft(has_left),
        };
        tokio::spawn(poll(
            member,
            Arc::clone(&shared),
            stop.clone(),
            inner.config.commit_interval,
            inner.config.offset_gap_wait,
        ));
        let patience = inner.config.session_timeout * 2;
        // Made first: should the caller give up while the group assigns, dropping it stops
        // the poll task and takes the member out.
        let subscription = Self {
            inner,
            shared,
            stop,
            group: group.to_owned(),
            left,
        };
        if tokio::time::timeout(patience, joined.wait_for(|joined| *joined))
            .await
            .is_err()
        {
            tracing::warn!(%group, ?patience, "no partitions assigned yet; consuming once the group assigns them");
        }
        Ok(subscription)
    }
}

/// Fetches into the shared queue and commits safe offsets periodically, until stopped; then
/// commits once more and leaves the group.
async fn poll(
    member: Member,
    shared: Arc<Shared>,
    stop: CancellationToken,
    commit_interval: Duration,
    gap_wait: Duration,
) {
    let consumer = &member.consumer;
    let mut commits = tokio::time::interval(commit_interval);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let commit = |mode: CommitMode| {
        let offsets = shared.committable(None);
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, mode) {
                tracing::warn!(%error, "cannot commit offsets");
            }
        }
    };
    loop {
        // Made before the queue is read: a delivery taken in between wakes it.
        let drained = shared.drained.notified();
        let buffered = shared.queue.waiting() >= MAX_BUFFERED;
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = commits.tick() => commit(CommitMode::Async),
            () = drained, if buffered => {}
            message = consumer.recv(), if !buffered => match message {
                Ok(message) => {
                    let refetch = shared.fetched(&message, gap_wait);
                    drop(message);
                    if let Some(refetch) = refetch {
                        refetch.run(consumer, &shared).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
    // The last commit and leaving the group block on the broker, without end if it vanished
    // (librdkafka waits for its outstanding requests). They run on a thread of their own,
    // which a blocking task waits for at most CLOSE_TIMEOUT: the runtime's shutdown waits
    // for blocking tasks, so a graceful exit still commits, and a gone broker never hangs it.
    drop(commits);
    tokio::task::spawn_blocking(move || {
        let (closed, on_close) = std::sync::mpsc::channel();
        let close = move || {
            let offsets = shared.committable(None);
            if offsets.count() > 0 {
                if let Err(error) = member.consumer.commit(&offsets, CommitMode::Async) {
                    tracing::warn!(%error, "cannot commit offsets on close");
                }
            }
            // Dropping the consumer closes it, which sends the commit and leaves the group.
            drop(member);
            let _ = closed.send(());
        };
        match std::thread::Builder::new()
            .name("choreo-kafka-close".to_owned())
            .spawn(close)
        {
            Ok(_) => {
                if on_close.recv_timeout(CLOSE_TIMEOUT).is_err() {
                    tracing::warn!(
                        timeout = ?CLOSE_TIMEOUT,
                        "the broker did not answer the consumer's close; leaving it behind"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start the thread that closes the consumer")
            }
        }
    });
}

/// How long closing a consumer may hold up the runtime's shutdown, and a new member of its
/// group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, TransportError> {
        let stop = &self.stop;
        let Some((key, pending)) = self.shared.queue.pop(|| stop.is_cancelled()).await else {
            return Err(TransportError::Closed);
        };
        self.shared.drained.notify_waiters();
        Ok(Delivery::new(
            pending.topic.clone(),
            pending.message.clone(),
            pending.deliveries > 0,
            Box::new(KafkaAck {
                inner: Arc::clone(&self.inner),
                shared: Arc::clone(&self.shared),
                key,
                pending: Some(pending),
            }),
        ))
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
        self.inner.leaving.add(&self.group, self.left.clone());
    }
}

/// Settles one delivery; dropped unsettled, it hands the message back for redelivery.
struct KafkaAck {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    key: Option<Arc<str>>,
    pending: Option<Pending>,
}

#[async_trait]
impl Acknowledge for KafkaAck {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(pending) = self.pending.take() {
            self.shared.acked(self.key.as_ref(), &pending);
        }
        Ok(())
    }

    async fn nack(mut self: Box<Self>) -> Result<(), TransportError> {
        if let Some(pending) = self.pending.take() {
            self.shared.returned(self.key.take(), pending);
        }
        Ok(())
    }

    async fn dead_letter(
        mut self: Box<Self>,
        message: RawMessage,
        reason: &str,
    ) -> Result<(), TransportError> {
        let topic = match &self.pending {
            Some(pending) => pending.topic.clone(),
            None => return Ok(()),
        };
        // On failure, `self` is dropped unsettled and the message is delivered again.
        self.inner.dead_letter(&topic, message, reason).await?;
        if let Some(pending) = self.pending.take() {
            self.shared.acked(self.key.as_ref(), &pending);
        }
        Ok(())
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.shared.returned(self.key.take(), pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_millis(250);

    #[tokio::test(start_paused = true)]
    async fn a_new_member_joins_once_the_members_taken_out_of_its_group_have_left() {
        let leaving = Leaving::default();
        let (has_left, left) = watch::channel(false);
        leaving.add("payments", left);
        let (_other_has_left, other_left) = watch::channel(false);
        leaving.add("orders", other_left);

        let mut joining = std::pin::pin!(leaving.wait("payments", CLOSE_TIMEOUT));
        let mut also_joining = std::pin::pin!(leaving.wait("payments", CLOSE_TIMEOUT));
        assert!(
            poll_once(&mut joining).await.is_pending(),
            "waits for the member leaving its group"
        );
        assert!(
            poll_once(&mut also_joining).await.is_pending(),
            "so does another member starting at the same time"
        );
        has_left.send_replace(true);
        assert!(poll_once(&mut joining).await.is_ready());
        assert!(poll_once(&mut also_joining).await.is_ready());
        // Another group's member leaving holds up nobody else, and one that never says it
        // has left holds up its group for the close timeout at most.
        let started = tokio::time::Instant::now();
        leaving.wait("shipping", CLOSE_TIMEOUT).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        leaving.wait("orders", CLOSE_TIMEOUT).await;
        assert_eq!(started.elapsed(), CLOSE_TIMEOUT);
    }

    /// Polls `future` once.
    async fn poll_once<F: std::future::Future + Unpin>(
        future: &mut F,
    ) -> std::task::Poll<F::Output> {
        std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx)))
            .await
    }

    #[test]
    fn offsets_in_sequence_are_taken() {
        let mut state = PartitionState::expecting(968);
        assert_eq!(state.admit(968, Instant::now(), PATIENCE), Admit::Take);
        // One fetched again after a seek back, or redelivered by the broker.
        assert_eq!(state.admit(967, Instant::now(), PATIENCE), Admit::Take);
    }

    #[test]
    fn a_skipped_offset_is_fetched_again_until_it_shows() {
        let mut state = PartitionState::expecting(968);
        let start = Instant::now();
        assert_eq!(
            state.admit(969, start, PATIENCE),
            Admit::Refetch {
                from: 968,
                again: false
            }
        );
        assert_eq!(
            state.admit(969, start + PATIENCE / 2, PATIENCE),
            Admit::Refetch {
                from: 968,
                again: true
            }
        );
        assert_eq!(
            state.admit(968, start + PATIENCE / 2, PATIENCE),
            Admit::Take
        );
        assert_eq!(state.gap_since, None, "the gap filled");
    }

    #[test]
    fn a_gap_that_outlasts_the_patience_is_the_brokers() {
        let mut state = PartitionState::expecting(968);
        let start = Instant::now();
        assert!(matches!(
            state.admit(970, start, PATIENCE),
            Admit::Refetch { .. }
        ));
        assert_eq!(state.admit(970, start + PATIENCE, PATIENCE), Admit::Take);
        // The next gap gets the whole patience again.
        state.next = 971;
        assert_eq!(
            state.admit(973, start + PATIENCE, PATIENCE),
            Admit::Refetch {
                from: 971,
                again: false
            }
        );
    }

    #[test]
    fn the_first_offset_after_an_assignment_is_checked_against_the_committed_one() {
        let shared = Shared::default();
        let mut committed = TopicPartitionList::new();
        committed
            .add_partition_offset("orders.saga", 2, Offset::Offset(968))
            .unwrap();
        // A partition the group never committed: its first offset is taken as it comes.
        committed
            .add_partition_offset("orders.saga", 0, Offset::Invalid)
            .unwrap();
        shared.expect(&committed);
        let mut partitions = shared.partitions();
        assert_eq!(partitions.len(), 1);
        let state = partitions.get_mut(&("orders.saga".to_owned(), 2)).unwrap();
        assert_eq!(
            state.admit(969, Instant::now(), PATIENCE),
            Admit::Refetch {
                from: 968,
                again: false
            }
        );
        assert_eq!(state.committed, 968);
    }

    #[test]
    fn no_patience_takes_every_gap_at_once() {
        let mut state = PartitionState::expecting(968);
        assert_eq!(
            state.admit(975, Instant::now(), Duration::ZERO),
            Admit::Take
        );
    }
}

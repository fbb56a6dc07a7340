//! The store conformance suite: what every choreo store must do, written once and run
//! against each (memory, SQLite, PostgreSQL), like the transport suite.
//!
//! Implement [`StoreSubject`] for the store under test and expand
//! [`store_conformance_tests!`](crate::store_conformance_tests) in a test file; every check
//! becomes one test:
//!
//! ```text
//! async fn memory() -> MemorySubject { MemorySubject::default() }
//! choreo_testkit::store_conformance_tests!(memory);
//! ```
//!
//! Every check works under service names of its own, so checks may share one database.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use choreo_core::journal::{AbortReason, CompensationState, SagaRecord, SagaStatus, StepRecord};
use choreo_core::store::{
    ActiveSaga, Claim, Commit, Handled, JournalChange, Outgoing, OutgoingKind, Purged, Recovery,
    Snapshot,
};
use choreo_core::{
    Deadline, Envelope, EventId, SagaId, SagaKind, Store, StoreTransaction, TraceContext,
};
use serde_json::value::RawValue;

/// The store under test, and what the checks need around it.
#[async_trait]
pub trait StoreSubject: Send + Sync {
    /// The store. Every call reaches the same data: a store opened again holds what an
    /// earlier one committed, if the store is durable.
    async fn open(&self) -> Arc<dyn Store>;

    /// Writes a business row named `key` in `transaction`, which the store began. Not
    /// called for stores without transactions.
    async fn write(&self, transaction: &mut Box<dyn StoreTransaction>, key: &str);

    /// Whether a committed business row named `key` exists.
    async fn written(&self, store: &Arc<dyn Store>, key: &str) -> bool;
}

/// Expands to one `#[tokio::test]` per store conformance check, each against the subject
/// the async fn `$subject` returns.
#[macro_export]
macro_rules! store_conformance_tests {
    ($subject:path) => {
        $crate::store_conformance_tests!(@each $subject;
            a_committed_record_loads_back_with_every_field,
            changes_touch_only_what_they_name,
            the_inbox_remembers_handled_events_per_service,
            services_sharing_a_store_keep_their_own_records,
            a_failed_commit_applies_nothing,
            a_transaction_commits_business_writes_with_the_handling_or_not_at_all,
            recovery_finds_timers_unfinished_compensations_and_unsent_events,
            events_marked_sent_are_not_recovered,
            purge_deletes_finished_sagas_and_old_inbox_ids_only,
            committed_state_survives_reopening,
            concurrent_commits_of_many_sagas_all_land,
            received_events_load_back_and_are_never_sent,
        );
    };
    (@each $subject:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let subject = $subject().await;
                $crate::store_conformance::$check(&subject).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per check of what a store several instances of a service
/// share must do besides ([`Store::is_shared`]): refuse commits from outdated versions, and
/// hand out overdue work once per claim.
#[macro_export]
macro_rules! shared_store_conformance_tests {
    ($subject:path) => {
        $crate::store_conformance_tests!(@each $subject;
            a_commit_from_an_outdated_version_is_a_conflict_and_applies_nothing,
            overdue_deadlines_and_unsent_events_are_claimed_once_until_the_claim_runs_out,
            instances_claiming_at_once_share_the_overdue_work_out,
        );
    };
}

fn fresh_service() -> String {
    format!("conformance-{}", uuid::Uuid::now_v7().simple())
}

/// A whole second, so that every store keeps it exactly; plus nanoseconds to check they
/// round-trip too.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789)
}

fn envelope(saga: SagaId, event_type: &str, kind: SagaKind) -> Envelope {
    Envelope {
        id: EventId::new(),
        source: "conformance".into(),
        event_type: event_type.into(),
        time: now(),
        saga_id: saga,
        causation_id: Some(EventId::new()),
        joined_causes: Vec::new(),
        deadline: Deadline::after(now(), Duration::from_secs(30)),
        kind,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(r#"{"order_id":7,"note":"ünïcode \"quoted\""}"#.to_owned())
            .unwrap_or_else(|_| unreachable!("valid JSON")),
        saga_data: Default::default(),
    }
}

fn step(saga: SagaId, event_type: &str) -> StepRecord {
    StepRecord {
        input: Some(EventId::new()),
        output: Arc::new(envelope(saga, event_type, SagaKind::Step)),
        withheld: false,
        published: false,
        compensation: CompensationState::Pending,
    }
}

/// A record with a start and a step, as an initiator that did two steps holds it.
fn record(saga: SagaId) -> SagaRecord {
    let mut record = SagaRecord::new(saga, Deadline::after(now(), Duration::from_secs(30)));
    record.initiated_here = true;
    record.steps.push(StepRecord {
        input: None,
        ..step(saga, "orders.OrderPlaced.v1")
    });
    record.steps.push(step(saga, "orders.OrderConfirmed.v1"));
    record
}

/// The commit that records `record` for the first time, after handling `handled`.
fn creating(service: &str, record: &SagaRecord, handled: Option<&Envelope>) -> Commit {
    Commit {
        service: service.to_owned(),
        saga_id: record.saga_id,
        version: 0,
        changes: Snapshot::changes(None, record),
        handled: handled.map(|event| Handled {
            event_id: event.id,
            deadline: event.deadline,
        }),
        outbox: Vec::new(),
        recorded: now(),
    }
}

/// The commit of what changed in `record` since `stored`, which is at `version`.
fn changing(service: &str, version: u64, stored: &SagaRecord, record: &SagaRecord) -> Commit {
    Commit {
        service: service.to_owned(),
        saga_id: record.saga_id,
        version,
        changes: Snapshot::changes(Some(&Snapshot::of(stored)), record),
        handled: None,
        outbox: Vec::new(),
        recorded: now(),
    }
}

async fn commit(store: &Arc<dyn Store>, commits: Vec<Commit>) {
    store
        .commit(commits, None)
        .await
        .unwrap_or_else(|error| panic!("commit: {error}"));
}

async fn load(store: &Arc<dyn Store>, service: &str, saga: SagaId) -> Option<SagaRecord> {
    store
        .load(service, saga, None)
        .await
        .unwrap_or_else(|error| panic!("load: {error}"))
        .record
}

async fn handled(store: &Arc<dyn Store>, service: &str, event: &Envelope) -> bool {
    store
        .load(service, event.saga_id, Some(event.id))
        .await
        .unwrap_or_else(|error| panic!("load: {error}"))
        .handled
}

async fn recover(store: &Arc<dyn Store>, service: &str) -> Recovery {
    store
        .recover(service)
        .await
        .unwrap_or_else(|error| panic!("recover: {error}"))
}

/// Every field of a record, its steps and their envelopes round-trips.
pub async fn a_committed_record_loads_back_with_every_field(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let saga = SagaId::new();
    assert_eq!(load(&store, &service, saga).await, None);

    let mut record = record(saga);
    record.steps[1].withheld = true;
    record.steps[1].compensation = CompensationState::Failed {
        reason: "ledger unavailable: `x` ünïcode".into(),
    };
    record.status = SagaStatus::Aborted {
        reason: AbortReason::DeadLettered,
    };
    record.abort_published = true;
    record.abort = Some(Box::new(envelope(
        saga,
        "choreo.SagaAborted.v1",
        SagaKind::Abort,
    )));
    commit(&store, vec![creating(&service, &record, None)]).await;
    assert_eq!(load(&store, &service, saga).await, Some(record));
}

/// Updates change the saga's own fields, append steps and change one step's compensation,
/// and leave the rest as it was.
pub async fn changes_touch_only_what_they_name(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let saga = SagaId::new();
    let first = record(saga);
    commit(&store, vec![creating(&service, &first, None)]).await;

    let mut second = first.clone();
    second.steps.push(step(saga, "payments.PaymentCaptured.v1"));
    second.status = SagaStatus::Completed;
    commit(&store, vec![changing(&service, 1, &first, &second)]).await;
    assert_eq!(load(&store, &service, saga).await.as_ref(), Some(&second));

    let mut third = second.clone();
    third.steps[1].compensation = CompensationState::Compensated;
    third.steps[0].compensation = CompensationState::NotRequired;
    third.compensation_acknowledged = true;
    let changes = changing(&service, 2, &second, &third);
    assert!(
        !changes
            .changes
            .iter()
            .any(|change| matches!(change, JournalChange::StepAdded { .. })),
        "no step is written again"
    );
    commit(&store, vec![changes]).await;
    assert_eq!(load(&store, &service, saga).await, Some(third));
}

/// An event recorded as handled is reported so, for its service only.
pub async fn the_inbox_remembers_handled_events_per_service(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let (service, other) = (fresh_service(), fresh_service());
    let saga = SagaId::new();
    let event = envelope(saga, "payments.CreditReserved.v1", SagaKind::Step);
    assert!(!handled(&store, &service, &event).await);

    // A handling that changed no record: only the inbox.
    let only_inbox = Commit {
        service: service.clone(),
        saga_id: saga,
        version: 0,
        changes: Vec::new(),
        handled: Some(Handled {
            event_id: event.id,
            deadline: event.deadline,
        }),
        outbox: Vec::new(),
        recorded: now(),
    };
    commit(&store, vec![only_inbox]).await;
    assert!(handled(&store, &service, &event).await);
    assert!(!handled(&store, &other, &event).await);
    let another = envelope(saga, "payments.CreditReserved.v1", SagaKind::Step);
    assert!(!handled(&store, &service, &another).await);
    assert_eq!(load(&store, &service, saga).await, None);
}

/// Two services keep their own record of one saga.
pub async fn services_sharing_a_store_keep_their_own_records(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let (payments, inventory) = (fresh_service(), fresh_service());
    let saga = SagaId::new();
    let mine = record(saga);
    let mut theirs = SagaRecord::new(saga, mine.deadline);
    theirs.steps.push(step(saga, "inventory.StockReserved.v1"));
    commit(
        &store,
        vec![
            creating(&payments, &mine, None),
            creating(&inventory, &theirs, None),
        ],
    )
    .await;
    assert_eq!(load(&store, &payments, saga).await, Some(mine));
    assert_eq!(load(&store, &inventory, saga).await, Some(theirs));
}

/// A commit that cannot be applied in full is applied not at all: creating a record that
/// exists is an error, and the commit before it in the same call is not applied either.
pub async fn a_failed_commit_applies_nothing(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let (existing, fresh) = (SagaId::new(), SagaId::new());
    commit(&store, vec![creating(&service, &record(existing), None)]).await;

    let event = envelope(fresh, "payments.CreditReserved.v1", SagaKind::Step);
    let result = store
        .commit(
            vec![
                creating(&service, &record(fresh), Some(&event)),
                creating(&service, &record(existing), None),
            ],
            None,
        )
        .await;
    assert!(result.is_err(), "creating an existing record must fail");
    assert_eq!(load(&store, &service, fresh).await, None);
    assert!(
        !handled(&store, &service, &event).await,
        "the inbox record was applied"
    );
}

/// With a store that has transactions, a handler's writes commit with the handling's
/// changes; rolled back, or dropped, nothing of either remains. A store without
/// transactions says so as an unsupported request.
pub async fn a_transaction_commits_business_writes_with_the_handling_or_not_at_all(
    subject: &dyn StoreSubject,
) {
    let store = subject.open().await;
    let service = fresh_service();
    let mut transaction = match store.begin().await {
        Ok(transaction) => transaction,
        Err(error) => {
            assert!(
                !store.is_durable(),
                "a durable store has transactions: {error}"
            );
            assert!(error.is_unsupported(), "{error}");
            return;
        }
    };
    let key = |name: &str| format!("{service}-{name}");

    let committed = SagaId::new();
    subject.write(&mut transaction, &key("committed")).await;
    store
        .commit(
            vec![creating(&service, &record(committed), None)],
            Some(transaction),
        )
        .await
        .unwrap_or_else(|error| panic!("commit in a transaction: {error}"));
    assert!(subject.written(&store, &key("committed")).await);
    assert!(load(&store, &service, committed).await.is_some());

    let mut transaction = store
        .begin()
        .await
        .unwrap_or_else(|error| panic!("begin: {error}"));
    subject.write(&mut transaction, &key("rolled back")).await;
    transaction
        .rollback()
        .await
        .unwrap_or_else(|error| panic!("rollback: {error}"));
    assert!(!subject.written(&store, &key("rolled back")).await);

    let mut transaction = store
        .begin()
        .await
        .unwrap_or_else(|error| panic!("begin: {error}"));
    subject.write(&mut transaction, &key("dropped")).await;
    drop(transaction);
    assert!(!subject.written(&store, &key("dropped")).await);

    // A failed commit rolls the handler's writes back too.
    let mut transaction = store
        .begin()
        .await
        .unwrap_or_else(|error| panic!("begin: {error}"));
    subject.write(&mut transaction, &key("failed")).await;
    let result = store
        .commit(
            vec![creating(&service, &record(committed), None)],
            Some(transaction),
        )
        .await;
    assert!(result.is_err());
    assert!(!subject.written(&store, &key("failed")).await);

    // And the store goes on afterwards.
    let after = SagaId::new();
    commit(&store, vec![creating(&service, &record(after), None)]).await;
    assert!(load(&store, &service, after).await.is_some());
}

/// What a restart needs: active sagas without an abort of their own (their timers),
/// aborted ones not acknowledged, and every step output and outbox entry not marked sent,
/// withheld outputs excepted.
pub async fn recovery_finds_timers_unfinished_compensations_and_unsent_events(
    subject: &dyn StoreSubject,
) {
    let store = subject.open().await;
    let service = fresh_service();
    assert_eq!(recover(&store, &service).await, Recovery::default());

    let active = record(SagaId::new());
    let mut aborting = record(SagaId::new());
    aborting.abort_published = true;
    let mut unfinished = record(SagaId::new());
    unfinished.status = SagaStatus::Aborted {
        reason: AbortReason::TimedOut,
    };
    unfinished.steps[1].withheld = true;
    let mut finished = record(SagaId::new());
    finished.status = SagaStatus::Completed;
    for record in [&mut aborting, &mut unfinished, &mut finished] {
        for step in &mut record.steps {
            step.published = true;
        }
    }
    let abort = envelope(aborting.saga_id, "choreo.SagaAborted.v1", SagaKind::Abort);
    let dead = envelope(
        unfinished.saga_id,
        "payments.CreditReserved.v1",
        SagaKind::Step,
    );
    let mut commits: Vec<Commit> = [&active, &aborting, &unfinished, &finished]
        .into_iter()
        .map(|record| creating(&service, record, None))
        .collect();
    commits[1].outbox.push(Outgoing {
        envelope: Arc::new(abort.clone()),
        kind: OutgoingKind::Event,
    });
    commits[2].outbox.push(Outgoing {
        envelope: Arc::new(dead.clone()),
        kind: OutgoingKind::DeadLetter {
            reason: "compensation of `payments.CreditReserved.v1` failed".into(),
        },
    });
    commit(&store, commits).await;

    let recovery = recover(&store, &service).await;
    assert_eq!(
        recovery.timers,
        [ActiveSaga {
            saga_id: active.saga_id,
            deadline: active.deadline,
            initiated_here: true,
        }]
    );
    assert_eq!(recovery.unfinished, [unfinished.saga_id]);
    let mut unsent = recovery.unsent;
    unsent.sort_by_key(|outgoing| outgoing.envelope.id);
    let mut expected = vec![
        Outgoing {
            envelope: Arc::clone(&active.steps[0].output),
            kind: OutgoingKind::Step { position: 0 },
        },
        Outgoing {
            envelope: Arc::clone(&active.steps[1].output),
            kind: OutgoingKind::Step { position: 1 },
        },
        Outgoing {
            envelope: Arc::new(abort),
            kind: OutgoingKind::Event,
        },
        Outgoing {
            envelope: Arc::new(dead),
            kind: OutgoingKind::DeadLetter {
                reason: "compensation of `payments.CreditReserved.v1` failed".into(),
            },
        },
    ];
    expected.sort_by_key(|outgoing| outgoing.envelope.id);
    assert_eq!(unsent, expected);
    assert_eq!(recover(&store, &fresh_service()).await, Recovery::default());
}

/// Marking events sent takes them out of what a restart sends again.
pub async fn events_marked_sent_are_not_recovered(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let record = record(SagaId::new());
    let abort = Outgoing {
        envelope: Arc::new(envelope(
            record.saga_id,
            "choreo.SagaAborted.v1",
            SagaKind::Abort,
        )),
        kind: OutgoingKind::Event,
    };
    let dead = Outgoing {
        envelope: Arc::new(envelope(record.saga_id, "x.Y.v1", SagaKind::Step)),
        kind: OutgoingKind::DeadLetter {
            reason: "failed".into(),
        },
    };
    let mut creation = creating(&service, &record, None);
    creation.outbox = vec![abort.clone(), dead.clone()];
    commit(&store, vec![creation]).await;
    assert_eq!(recover(&store, &service).await.unsent.len(), 4);

    let start = Outgoing {
        envelope: Arc::clone(&record.steps[0].output),
        kind: OutgoingKind::Step { position: 0 },
    };
    store
        .mark_sent(&service, &[start.sent(), abort.sent(), dead.sent()])
        .await
        .unwrap_or_else(|error| panic!("mark_sent: {error}"));
    let unsent = recover(&store, &service).await.unsent;
    assert_eq!(
        unsent,
        [Outgoing {
            envelope: Arc::clone(&record.steps[1].output),
            kind: OutgoingKind::Step { position: 1 },
        }]
    );
    let loaded = load(&store, &service, record.saga_id).await;
    assert_eq!(
        loaded.map(|record| record
            .steps
            .iter()
            .map(|step| step.published)
            .collect::<Vec<_>>()),
        Some(vec![true, false])
    );
}

/// Purging deletes finished sagas whose deadline is before the cutoff, and inbox ids of
/// events whose deadline is; active sagas and unacknowledged aborts stay, whatever their age.
pub async fn purge_deletes_finished_sagas_and_old_inbox_ids_only(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let old = Deadline::after(now(), Duration::from_secs(10));
    let recent = Deadline::after(now(), Duration::from_secs(1_000));
    let cutoff = now() + Duration::from_secs(100);
    let with = |deadline: Deadline, status: SagaStatus, acknowledged: bool| {
        let mut record = record(SagaId::new());
        record.deadline = deadline;
        record.status = status;
        record.compensation_acknowledged = acknowledged;
        record
    };
    let aborted = SagaStatus::Aborted {
        reason: AbortReason::Rejected,
    };
    let purged = [
        with(old, SagaStatus::Completed, false),
        with(old, aborted.clone(), true),
    ];
    let kept = [
        with(old, SagaStatus::Active, false),
        with(old, aborted, false),
        with(recent, SagaStatus::Completed, false),
    ];
    let old_event = Envelope {
        deadline: old,
        ..envelope(purged[0].saga_id, "x.Old.v1", SagaKind::Step)
    };
    let recent_event = Envelope {
        deadline: recent,
        ..envelope(kept[2].saga_id, "x.Recent.v1", SagaKind::Step)
    };
    let mut commits: Vec<Commit> = purged
        .iter()
        .chain(&kept)
        .map(|record| creating(&service, record, None))
        .collect();
    commits[0].handled = Some(Handled {
        event_id: old_event.id,
        deadline: old,
    });
    commits[4].handled = Some(Handled {
        event_id: recent_event.id,
        deadline: recent,
    });
    commit(&store, commits).await;

    let result = store
        .purge(&service, cutoff)
        .await
        .unwrap_or_else(|error| panic!("purge: {error}"));
    assert_eq!(
        result,
        Purged {
            sagas: 2,
            handled: 1
        }
    );
    for record in &purged {
        assert_eq!(load(&store, &service, record.saga_id).await, None);
    }
    for record in &kept {
        assert_eq!(
            load(&store, &service, record.saga_id).await.as_ref(),
            Some(record)
        );
    }
    assert!(!handled(&store, &service, &old_event).await);
    assert!(handled(&store, &service, &recent_event).await);
    let again = store
        .purge(&service, cutoff)
        .await
        .unwrap_or_else(|error| panic!("purge: {error}"));
    assert_eq!(again, Purged::default());
}

/// What a durable store committed is there when it is opened again; a store that is not
/// durable says so.
pub async fn committed_state_survives_reopening(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    if !store.is_durable() {
        assert_eq!(store.name(), "memory");
        return;
    }
    let service = fresh_service();
    let record = record(SagaId::new());
    let event = envelope(record.saga_id, "x.Y.v1", SagaKind::Step);
    commit(&store, vec![creating(&service, &record, Some(&event))]).await;
    drop(store);

    let store = subject.open().await;
    let loaded = store
        .load(&service, record.saga_id, Some(event.id))
        .await
        .unwrap_or_else(|error| panic!("load: {error}"));
    assert_eq!(loaded.record, Some(record));
    assert!(loaded.handled);
}

/// Events a service keeps ([`StepRecord::received`], e.g. what a join waits with) load back
/// as they were, in a record that holds nothing else or among steps, and are never handed out
/// for sending, while an unpublished step beside them is.
pub async fn received_events_load_back_and_are_never_sent(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let saga = SagaId::new();
    let mut record = SagaRecord::new(saga, Deadline::after(now(), Duration::from_secs(30)));
    record.steps.push(StepRecord::received(envelope(
        saga,
        "flights.FlightBooked.v1",
        SagaKind::Step,
    )));
    commit(&store, vec![creating(&service, &record, None)]).await;
    assert_eq!(load(&store, &service, saga).await.as_ref(), Some(&record));
    assert!(recover(&store, &service).await.unsent.is_empty());

    let stored = record.clone();
    record.steps.push(StepRecord::received(envelope(
        saga,
        "hotels.HotelBooked.v1",
        SagaKind::Step,
    )));
    record.steps.push(step(saga, "payments.PaymentCharged.v1"));
    commit(&store, vec![changing(&service, 1, &stored, &record)]).await;
    assert_eq!(load(&store, &service, saga).await.as_ref(), Some(&record));
    let unsent = recover(&store, &service).await.unsent;
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    assert_eq!(unsent[0].envelope, record.steps[2].output);
    assert_eq!(unsent[0].kind, OutgoingKind::Step { position: 2 });
}

/// Many handlings committing at once, as a service's workers do, all land.
pub async fn concurrent_commits_of_many_sagas_all_land(subject: &dyn StoreSubject) {
    let store = subject.open().await;
    let service = fresh_service();
    let records: Vec<SagaRecord> = (0..200).map(|_| record(SagaId::new())).collect();
    let commits = records.iter().map(|record| {
        let store = Arc::clone(&store);
        let commit = creating(&service, record, None);
        async move { store.commit(vec![commit], None).await }
    });
    for result in futures_join_all(commits).await {
        result.unwrap_or_else(|error| panic!("commit: {error}"));
    }
    for record in &records {
        assert_eq!(
            load(&store, &service, record.saga_id).await.as_ref(),
            Some(record)
        );
    }
    assert_eq!(recover(&store, &service).await.timers.len(), records.len());
}

/// Runs every future concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(
            handle
                .await
                .unwrap_or_else(|error| panic!("a commit panicked: {error}")),
        );
    }
    outputs
}

/// Two handlings of one saga made from the same version: the first commit applies, the
/// second is refused as a conflict and applies nothing (not its inbox id either); made
/// again from the new version it applies. Creating a record another commit created is a
/// conflict too.
pub async fn a_commit_from_an_outdated_version_is_a_conflict_and_applies_nothing(
    subject: &dyn StoreSubject,
) {
    let store = subject.open().await;
    assert!(store.is_shared(), "the store says it can be shared");
    let service = fresh_service();
    let saga = SagaId::new();
    let created = record(saga);
    commit(&store, vec![creating(&service, &created, None)]).await;
    let loaded = store
        .load(&service, saga, None)
        .await
        .unwrap_or_else(|error| panic!("load: {error}"));
    assert_eq!(loaded.version, 1, "one commit changed the record");

    let (first_event, second_event) = (
        envelope(saga, "inventory.StockReserved.v1", SagaKind::Step),
        envelope(saga, "choreo.SagaAborted.v1", SagaKind::Abort),
    );
    let mut stepped = created.clone();
    stepped
        .steps
        .push(step(saga, "payments.PaymentCaptured.v1"));
    let mut first = changing(&service, 1, &created, &stepped);
    first.handled = Some(Handled {
        event_id: first_event.id,
        deadline: first_event.deadline,
    });
    let mut aborted = created.clone();
    aborted.status = SagaStatus::Aborted {
        reason: AbortReason::Rejected,
    };
    aborted.steps[1].compensation = CompensationState::Compensated;
    let mut second = changing(&service, 1, &created, &aborted);
    second.handled = Some(Handled {
        event_id: second_event.id,
        deadline: second_event.deadline,
    });
    second.outbox.push(Outgoing {
        envelope: Arc::new(envelope(
            saga,
            "choreo.SagaCompensated.v1",
            SagaKind::Compensated,
        )),
        kind: OutgoingKind::Event,
    });

    commit(&store, vec![first]).await;
    // A handling that changes nothing in the record, made from the old version: refused too,
    // its inbox entry with it.
    let mut unchanged = changing(&service, 1, &created, &created);
    unchanged.handled = second.handled;
    assert!(unchanged.changes.is_empty());
    let refused = store.commit(vec![unchanged], None).await;
    assert!(
        refused.as_ref().is_err_and(|error| error.is_conflict()),
        "a commit from version 1 that changes nothing must be a conflict too: {refused:?}"
    );
    assert!(!handled(&store, &service, &second_event).await);
    let refused = store.commit(vec![second.clone()], None).await;
    assert!(
        refused.as_ref().is_err_and(|error| error.is_conflict()),
        "a commit from version 1 after another one must be a conflict: {refused:?}"
    );
    assert_eq!(load(&store, &service, saga).await.as_ref(), Some(&stepped));
    assert!(!handled(&store, &service, &second_event).await);
    assert!(
        recover(&store, &service)
            .await
            .unsent
            .iter()
            .all(|unsent| unsent.kind != OutgoingKind::Event),
        "the refused commit's outbox entry is not recorded"
    );

    // Made again from what the store holds now.
    let mut aborted = stepped.clone();
    aborted.status = SagaStatus::Aborted {
        reason: AbortReason::Rejected,
    };
    aborted.steps[2].compensation = CompensationState::Compensated;
    let mut again = changing(&service, 2, &stepped, &aborted);
    again.handled = second.handled;
    commit(&store, vec![again]).await;
    assert_eq!(load(&store, &service, saga).await, Some(aborted));
    assert!(handled(&store, &service, &second_event).await);
    let loaded = store
        .load(&service, saga, None)
        .await
        .unwrap_or_else(|error| panic!("load: {error}"));
    assert_eq!(loaded.version, 3);

    let twice = store
        .commit(vec![creating(&service, &record(saga), None)], None)
        .await;
    assert!(
        twice.as_ref().is_err_and(|error| error.is_conflict()),
        "creating a record that exists must be a conflict: {twice:?}"
    );
}

/// Active sagas past a deadline with no abort recorded, and events recorded before a time
/// and not sent, are handed to one caller; again only once that claim ran out; never what
/// is not overdue, aborted, finished or sent.
pub async fn overdue_deadlines_and_unsent_events_are_claimed_once_until_the_claim_runs_out(
    subject: &dyn StoreSubject,
) {
    let store = subject.open().await;
    let service = fresh_service();
    // Every record's deadline is `now() + 30 s`, every event's time `now()`.
    let overdue = record(SagaId::new());
    let mut later = record(SagaId::new());
    later.deadline = Deadline::after(now(), Duration::from_secs(300));
    let mut aborting = record(SagaId::new());
    aborting.abort_published = true;
    let mut finished = record(SagaId::new());
    finished.status = SagaStatus::Completed;
    let mut recent = record(SagaId::new());
    recent.status = SagaStatus::Completed;
    for record in [&mut later, &mut aborting, &mut finished] {
        for step in &mut record.steps {
            step.published = true;
        }
    }
    let abort = Outgoing {
        envelope: Arc::new(envelope(
            aborting.saga_id,
            "choreo.SagaAborted.v1",
            SagaKind::Abort,
        )),
        kind: OutgoingKind::Event,
    };
    let mut commits: Vec<Commit> = [&overdue, &later, &aborting, &finished, &recent]
        .into_iter()
        .map(|record| creating(&service, record, None))
        .collect();
    commits[2].outbox.push(abort.clone());
    // Recorded a minute later: not long enough ago to be claimed.
    commits[4].recorded = now() + Duration::from_secs(60);
    commit(&store, commits).await;

    let claim = |at: SystemTime| Claim {
        deadlines_before: now() + Duration::from_secs(60),
        recorded_before: now() + Duration::from_secs(1),
        now: at,
        until: at + Duration::from_secs(10),
        limit: 100,
    };
    let claimed = store
        .claim(&service, &claim(now() + Duration::from_secs(70)))
        .await
        .unwrap_or_else(|error| panic!("claim: {error}"));
    assert_eq!(
        claimed.timers,
        [ActiveSaga {
            saga_id: overdue.saga_id,
            deadline: overdue.deadline,
            initiated_here: true,
        }]
    );
    let mut unsent = claimed.unsent;
    unsent.sort_by_key(|outgoing| outgoing.envelope.id);
    let mut expected = vec![
        Outgoing {
            envelope: Arc::clone(&overdue.steps[0].output),
            kind: OutgoingKind::Step { position: 0 },
        },
        Outgoing {
            envelope: Arc::clone(&overdue.steps[1].output),
            kind: OutgoingKind::Step { position: 1 },
        },
        abort.clone(),
    ];
    expected.sort_by_key(|outgoing| outgoing.envelope.id);
    assert_eq!(unsent, expected);

    let during = store
        .claim(&service, &claim(now() + Duration::from_secs(75)))
        .await
        .unwrap_or_else(|error| panic!("claim: {error}"));
    assert!(during.is_empty(), "claimed until 80 s: {during:?}");
    assert!(
        store
            .claim(&fresh_service(), &claim(now() + Duration::from_secs(75)))
            .await
            .unwrap_or_else(|error| panic!("claim: {error}"))
            .is_empty(),
        "another service claims nothing of this one's"
    );

    store
        .mark_sent(&service, &[abort.sent()])
        .await
        .unwrap_or_else(|error| panic!("mark sent: {error}"));
    let after = store
        .claim(&service, &claim(now() + Duration::from_secs(81)))
        .await
        .unwrap_or_else(|error| panic!("claim: {error}"));
    assert_eq!(after.timers.len(), 1, "the claim ran out: {after:?}");
    assert_eq!(
        after.unsent.len(),
        2,
        "the abort was sent meanwhile: {after:?}"
    );
}

/// Instances that look for work at the same moment each claim a part of it, never the same
/// saga or event twice, and together all of it.
pub async fn instances_claiming_at_once_share_the_overdue_work_out(subject: &dyn StoreSubject) {
    let (first, second) = (subject.open().await, subject.open().await);
    let service = fresh_service();
    let records: Vec<SagaRecord> = (0..40).map(|_| record(SagaId::new())).collect();
    let commits = records
        .iter()
        .map(|record| creating(&service, record, None))
        .collect();
    commit(&first, commits).await;

    let at = now() + Duration::from_secs(70);
    let claim = Claim {
        deadlines_before: now() + Duration::from_secs(60),
        recorded_before: now() + Duration::from_secs(1),
        now: at,
        until: at + Duration::from_secs(10),
        limit: 25,
    };
    let claiming = |store: Arc<dyn Store>, service: String| async move {
        store
            .claim(&service, &claim)
            .await
            .unwrap_or_else(|error| panic!("claim: {error}"))
    };
    // Two at a time, each on a store of its own, as two instances would.
    let (a, b) = tokio::join!(
        claiming(Arc::clone(&first), service.clone()),
        claiming(Arc::clone(&second), service.clone()),
    );
    let (c, d) = tokio::join!(claiming(first, service.clone()), claiming(second, service));
    let mut sagas: Vec<SagaId> = [&a, &b, &c, &d]
        .iter()
        .flat_map(|claimed| claimed.timers.iter().map(|saga| saga.saga_id))
        .collect();
    sagas.sort();
    let mut expected: Vec<SagaId> = records.iter().map(|record| record.saga_id).collect();
    expected.sort();
    assert_eq!(sagas, expected, "every overdue saga claimed exactly once");
    let mut events: Vec<EventId> = [&a, &b, &c, &d]
        .iter()
        .flat_map(|claimed| claimed.unsent.iter().map(|unsent| unsent.envelope.id))
        .collect();
    events.sort();
    let mut expected: Vec<EventId> = records
        .iter()
        .flat_map(|record| record.steps.iter().map(|step| step.output.id))
        .collect();
    expected.sort();
    assert_eq!(events, expected, "every unsent event claimed exactly once");
}

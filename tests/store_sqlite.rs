//! The store conformance suite on the SQLite store, plus its URL and file errors.
#![cfg(feature = "sqlite")]

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use choreo::sqlite::{rusqlite, SqliteStore, SqliteTransaction};
use choreo::{OpenStoreError, Store, StoreTransaction, StoreUrl, UrlError};
use choreo_testkit::store_conformance::StoreSubject;

/// A database file of its own, removed with the subject.
struct Sqlite {
    directory: PathBuf,
}

impl Sqlite {
    fn path(&self) -> PathBuf {
        self.directory.join("store.db")
    }
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

#[choreo::async_trait]
impl StoreSubject for Sqlite {
    async fn open(&self) -> Arc<dyn Store> {
        let url = format!("sqlite://{}", self.path().display());
        Arc::new(
            SqliteStore::open(&StoreUrl::parse(&url).unwrap())
                .await
                .unwrap(),
        )
    }

    async fn write(&self, transaction: &mut Box<dyn StoreTransaction>, key: &str) {
        let transaction: &mut dyn Any = &mut **transaction;
        let transaction = transaction.downcast_mut::<SqliteTransaction>().unwrap();
        let key = key.to_owned();
        transaction
            .run(move |db| {
                db.execute(
                    "CREATE TABLE IF NOT EXISTS business (key TEXT PRIMARY KEY)",
                    [],
                )?;
                db.execute("INSERT INTO business (key) VALUES (?1)", [key])
            })
            .await
            .unwrap();
    }

    async fn written(&self, _store: &Arc<dyn Store>, key: &str) -> bool {
        let db = rusqlite::Connection::open(self.path()).unwrap();
        let exists: bool = db
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'business')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        exists
            && db
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM business WHERE key = ?1)",
                    [key],
                    |row| row.get(0),
                )
                .unwrap()
    }
}

async fn sqlite() -> Sqlite {
    let directory = std::env::temp_dir().join(format!("choreo-store-{}", uuid::Uuid::now_v7()));
    Sqlite { directory }
}

choreo_testkit::store_conformance_tests!(sqlite);

#[tokio::test]
async fn open_store_creates_the_file_and_its_directory() {
    let subject = sqlite().await;
    let path = subject.directory.join("nested/dir/orders.db");
    let store = choreo::open_store(&format!("sqlite://{}?synchronous=full", path.display()))
        .await
        .unwrap();
    assert_eq!(store.name(), "sqlite");
    assert!(store.is_durable());
    assert!(path.exists());
}

#[tokio::test]
async fn a_bad_sqlite_url_or_file_says_what_was_expected() {
    let error = choreo::open_store("sqlite://").await.err().unwrap();
    assert!(
        matches!(error, OpenStoreError::Url(UrlError::Invalid { .. })),
        "{error}"
    );
    let error = choreo::open_store("sqlite://x.db?cache=huge")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, OpenStoreError::Url(UrlError::InvalidOption { .. })),
        "{error}"
    );

    let subject = sqlite().await;
    std::fs::create_dir_all(&subject.directory).unwrap();
    let not_a_database = subject.directory.join("notes.txt");
    std::fs::write(
        &not_a_database,
        "this is not a database, it is a text file; ".repeat(100),
    )
    .unwrap();
    let error = choreo::open_store(&format!("sqlite://{}", not_a_database.display()))
        .await
        .err()
        .unwrap();
    let message = error.to_string();
    assert!(matches!(error, OpenStoreError::Open { .. }), "{message}");
    assert!(
        message.contains("expected a writable file path"),
        "{message}"
    );

    let blocked = subject.directory.join("notes.txt/inside.db");
    let message = choreo::open_store(&format!("sqlite://{}", blocked.display()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("cannot create directory"), "{message}");
}

mod cancelled {
    //! Callers that stop waiting (a timeout, a killed task) while the store works for them.

    use std::time::Duration;

    use choreo::journal::{SagaRecord, StepRecord};
    use choreo::store::{Commit, Snapshot};
    use choreo::{Deadline, Envelope, EventId, SagaId, SagaKind, TraceContext};

    use super::*;

    fn record() -> SagaRecord {
        let now = std::time::SystemTime::now();
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, Deadline::after(now, Duration::from_secs(30)));
        record.steps.push(StepRecord {
            input: None,
            output: std::sync::Arc::new(Envelope {
                id: EventId::new(),
                source: "orders".into(),
                event_type: "orders.OrderPlaced.v1".into(),
                time: now,
                saga_id: saga,
                causation_id: None,
                joined_causes: Vec::new(),
                deadline: record.deadline,
                kind: SagaKind::Start,
                trace: TraceContext::new_root(),
                data: serde_json::value::to_raw_value(&7).unwrap(),
                saga_data: Default::default(),
            }),
            withheld: false,
            published: false,
            compensation: choreo::journal::CompensationState::Pending,
        });
        record
    }

    fn commit(stored: Option<&SagaRecord>, record: &SagaRecord) -> Commit {
        Commit {
            service: "orders".into(),
            saga_id: record.saga_id,
            version: 0,
            changes: Snapshot::changes(stored.map(Snapshot::of).as_ref(), record),
            handled: None,
            outbox: Vec::new(),
            recorded: std::time::SystemTime::now(),
        }
    }

    /// A transaction whose caller gave up while it waited for the writer never takes it:
    /// the store goes on once the transaction holding it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_begin_given_up_while_waiting_for_the_writer_never_holds_it() {
        let subject = sqlite().await;
        let store = subject.open().await;
        let holding = store.begin().await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), store.begin()).await;
        assert!(
            waiting.is_err(),
            "the second transaction waits for the first"
        );
        holding.rollback().await.unwrap();

        let record = record();
        let committed = tokio::time::timeout(
            Duration::from_secs(10),
            store.commit(vec![commit(None, &record)], None),
        )
        .await;
        assert!(
            matches!(committed, Ok(Ok(()))),
            "the writer was left held: {committed:?}"
        );
        let loaded = store.load("orders", record.saga_id, None).await.unwrap();
        assert_eq!(loaded.record, Some(record));
    }

    /// A commit whose caller stopped waiting once it was queued still commits, and the
    /// store's answers from memory show it, as the file does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_given_up_after_it_was_queued_is_seen_by_every_load() {
        let subject = sqlite().await;
        let store = subject.open().await;
        let first = record();
        store
            .commit(vec![commit(None, &first)], None)
            .await
            .unwrap();
        // Loaded once: kept in the store's memory of sagas in flight.
        assert_eq!(
            store
                .load("orders", first.saga_id, None)
                .await
                .unwrap()
                .record,
            Some(first.clone())
        );

        let mut second = first.clone();
        second.abort_published = true;
        // A transaction holds the writer, so the commit waits in the queue when its caller
        // gives up.
        let holding = store.begin().await.unwrap();
        let given_up = tokio::time::timeout(
            Duration::from_millis(50),
            store.commit(vec![commit(Some(&first), &second)], None),
        )
        .await;
        assert!(given_up.is_err(), "the commit waited for the writer");
        holding.rollback().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = store
                .load("orders", first.saga_id, None)
                .await
                .unwrap()
                .record;
            if loaded.as_ref() == Some(&second) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never seen: {loaded:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(store);
        let reopened = subject.open().await;
        assert_eq!(
            reopened
                .load("orders", first.saga_id, None)
                .await
                .unwrap()
                .record,
            Some(second)
        );
    }
}

mod schema {
    //! What the SQLite file holds, read with SQL: the first schema's files migrate, and marks
    //! of sent outputs ride on their saga's next write.

    use std::time::{Duration, SystemTime};

    use choreo::journal::{CompensationState, SagaRecord, StepRecord};
    use choreo::store::{Commit, Handled, Sent, SentKind, Snapshot};
    use choreo::{Deadline, Envelope, EventId, SagaId, SagaKind, TraceContext};

    use super::*;

    fn envelope(saga: SagaId, event_type: &str, deadline: Deadline) -> Envelope {
        Envelope {
            id: EventId::new(),
            source: "payments".into(),
            event_type: event_type.into(),
            time: SystemTime::now(),
            saga_id: saga,
            causation_id: Some(EventId::new()),
            joined_causes: Vec::new(),
            deadline,
            kind: SagaKind::Step,
            trace: TraceContext::new_root(),
            data: serde_json::value::to_raw_value(&serde_json::json!({"cents": 700})).unwrap(),
            saga_data: Default::default(),
        }
    }

    fn step(output: Envelope, published: bool) -> StepRecord {
        StepRecord {
            input: Some(EventId::new()),
            output: output.into(),
            withheld: false,
            published,
            compensation: CompensationState::Pending,
        }
    }

    fn nanos(deadline: Deadline) -> i64 {
        deadline
            .instant()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    }

    /// A file written by the first version of the schema (a table for the inbox, a flag per
    /// step for its output's publication) opens with everything it held.
    #[tokio::test]
    async fn a_file_of_the_first_schema_opens_with_everything_it_held() {
        let subject = sqlite().await;
        std::fs::create_dir_all(&subject.directory).unwrap();
        let deadline = Deadline::after(SystemTime::now(), Duration::from_secs(300));
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, deadline);
        record.steps = vec![
            step(envelope(saga, "payments.CreditReserved.v1", deadline), true),
            step(envelope(saga, "payments.CreditCapped.v1", deadline), false),
        ];
        let handled = [EventId::new(), EventId::new()];
        let (inbox_only, inbox_only_event) = (SagaId::new(), EventId::new());
        let abort = envelope(saga, "choreo.SagaAborted.v1", deadline);
        {
            let db = rusqlite::Connection::open(subject.path()).unwrap();
            db.execute_batch(
                "CREATE TABLE choreo_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                     applied_at TEXT NOT NULL DEFAULT '2026-12-01T00:00:00Z');
                 INSERT INTO choreo_migrations (version, name) VALUES (1, 'saga state');",
            )
            .unwrap();
            db.execute_batch(include_str!(
                "../adapters/sqlite/migrations/0001_saga_state.sql"
            ))
            .unwrap();
            db.execute(
                "INSERT INTO choreo_sagas VALUES ('payments', ?1, ?2, 'active', NULL, 0, 0, 0, NULL)",
                rusqlite::params![saga.to_string(), nanos(deadline)],
            )
            .unwrap();
            for (position, step) in record.steps.iter().enumerate() {
                db.execute(
                    "INSERT INTO choreo_steps VALUES ('payments', ?1, ?2, ?3, ?4, 0, ?5, 'pending', NULL)",
                    rusqlite::params![
                        saga.to_string(),
                        position as i64,
                        step.input.unwrap().to_string(),
                        step.output.to_json(),
                        step.published,
                    ],
                )
                .unwrap();
            }
            for (event, saga) in [
                (handled[0], saga),
                (handled[1], saga),
                (inbox_only_event, inbox_only),
            ] {
                db.execute(
                    "INSERT INTO choreo_inbox VALUES ('payments', ?1, ?2, ?3)",
                    rusqlite::params![saga.to_string(), event.to_string(), nanos(deadline)],
                )
                .unwrap();
            }
            db.execute(
                "INSERT INTO choreo_outbox (service, saga_id, event_id, kind, envelope)
                 VALUES ('payments', ?1, ?2, 'event', ?3)",
                rusqlite::params![saga.to_string(), abort.id.to_string(), abort.to_json()],
            )
            .unwrap();
        }

        let store = subject.open().await;
        for event in handled {
            let loaded = store.load("payments", saga, Some(event)).await.unwrap();
            assert_eq!(loaded.record.as_ref(), Some(&record));
            assert!(loaded.handled);
        }
        let loaded = store
            .load("payments", inbox_only, Some(inbox_only_event))
            .await
            .unwrap();
        assert_eq!((loaded.record, loaded.handled), (None, true));
        let recovery = store.recover("payments").await.unwrap();
        let mut unsent: Vec<EventId> = recovery.unsent.iter().map(|o| o.envelope.id).collect();
        unsent.sort();
        let mut expected = vec![record.steps[1].output.id, abort.id];
        expected.sort();
        assert_eq!(unsent, expected);
        assert_eq!(recovery.timers.len(), 1);
        assert_eq!(recovery.timers[0].saga_id, saga);
    }

    fn unsent_in_file(subject: &Sqlite, saga: SagaId) -> String {
        rusqlite::Connection::open(subject.path())
            .unwrap()
            .query_row(
                "SELECT unsent FROM choreo_sagas WHERE service = 'payments' AND saga_id = ?1",
                [saga.to_string()],
                |row| row.get(0),
            )
            .unwrap()
    }

    /// A saga of payments with one step whose output is not yet sent, committed to `store`.
    async fn saga_with_an_unsent_step(store: &Arc<dyn Store>) -> SagaRecord {
        let deadline = Deadline::after(SystemTime::now(), Duration::from_secs(300));
        let saga = SagaId::new();
        let mut record = SagaRecord::new(saga, deadline);
        record.steps.push(step(
            envelope(saga, "payments.CreditReserved.v1", deadline),
            false,
        ));
        let created = Commit {
            service: "payments".into(),
            saga_id: saga,
            version: 0,
            changes: Snapshot::changes(None, &record),
            handled: None,
            outbox: Vec::new(),
            recorded: SystemTime::now(),
        };
        store.commit(vec![created], None).await.unwrap();
        record
    }

    /// Marking an output sent costs no write of its own when its saga is written again: the
    /// saga's next commit writes it; a store dropped first writes it on its own.
    #[tokio::test]
    async fn a_mark_is_written_with_the_sagas_next_commit_or_when_the_store_is_dropped() {
        let subject = sqlite().await;
        let store = subject.open().await;
        let record = saga_with_an_unsent_step(&store).await;
        let (saga, deadline) = (record.saga_id, record.deadline);
        assert_eq!(unsent_in_file(&subject, saga), "0");

        let sent = |position: usize, event_id: EventId| Sent {
            saga_id: saga,
            event_id,
            kind: SentKind::Step { position },
        };
        store
            .mark_sent("payments", &[sent(0, record.steps[0].output.id)])
            .await
            .unwrap();
        assert_eq!(unsent_in_file(&subject, saga), "0", "the mark waits");
        let loaded = store
            .load("payments", saga, None)
            .await
            .unwrap()
            .record
            .unwrap();
        assert!(
            loaded.steps[0].published,
            "the store's answers have it at once"
        );

        let stored = loaded.clone();
        let mut next = loaded;
        next.steps.push(step(
            envelope(saga, "payments.CreditCapped.v1", deadline),
            false,
        ));
        let handled = EventId::new();
        let added = Commit {
            service: "payments".into(),
            saga_id: saga,
            version: 0,
            changes: Snapshot::changes(Some(&Snapshot::of(&stored)), &next),
            handled: Some(Handled {
                event_id: handled,
                deadline,
            }),
            outbox: Vec::new(),
            recorded: std::time::SystemTime::now(),
        };
        store.commit(vec![added], None).await.unwrap();
        assert_eq!(
            unsent_in_file(&subject, saga),
            "1",
            "written with the commit"
        );

        store
            .mark_sent("payments", &[sent(1, next.steps[1].output.id)])
            .await
            .unwrap();
        assert_eq!(unsent_in_file(&subject, saga), "1");
        drop(store);
        assert_eq!(unsent_in_file(&subject, saga), "", "written when dropped");
        let reopened = subject.open().await;
        let loaded = reopened
            .load("payments", saga, Some(handled))
            .await
            .unwrap();
        assert!(loaded.handled);
        assert!(loaded
            .record
            .unwrap()
            .steps
            .iter()
            .all(|step| step.published));
        assert!(reopened
            .recover("payments")
            .await
            .unwrap()
            .unsent
            .is_empty());
    }

    /// A mark that has waited its longest while a handler's transaction holds the file is
    /// written once that transaction ends, before the next one begins: not tried inside it
    /// and lost.
    #[tokio::test]
    async fn a_mark_due_while_a_handler_transaction_is_open_is_written_after_it() {
        let subject = sqlite().await;
        let store = subject.open().await;
        let record = saga_with_an_unsent_step(&store).await;
        let saga = record.saga_id;
        let sent = Sent {
            saga_id: saga,
            event_id: record.steps[0].output.id,
            kind: SentKind::Step { position: 0 },
        };
        store.mark_sent("payments", &[sent]).await.unwrap();

        let mut handler = store.begin().await.unwrap();
        // Another handler's transaction waits for the file meanwhile.
        let next = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.begin().await }
        });
        // Past the longest a mark waits for its saga's next write (a second): the handler's
        // next statement finds it due.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        subject.write(&mut handler, "credit-700").await;
        store.commit(Vec::new(), Some(handler)).await.unwrap();
        let next = next.await.unwrap().unwrap();
        assert_eq!(
            unsent_in_file(&subject, saga),
            "",
            "the mark was written between the two transactions"
        );
        next.rollback().await.unwrap();
        assert!(subject.written(&store, "credit-700").await);
    }
}

/// SQLite keeps one instance per service: a second instance of a service started on the
/// same file (as a second process would be, with a store of its own) is refused, and the
/// error points to PostgreSQL. Another service on the same file runs; once the first
/// instance is gone, killed as a crash would, a new one starts.
#[tokio::test(start_paused = true)]
async fn a_second_instance_of_a_service_on_one_sqlite_file_is_refused() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct OrderPlaced {
        order_id: u64,
    }
    impl choreo::Event for OrderPlaced {
        const TYPE: &'static str = "orders.OrderPlaced.v1";
    }

    let subject = sqlite().await;
    let saga = choreo::Saga::new("orders.saga").completes_on::<OrderPlaced>();
    let transport: Arc<dyn choreo::Transport> = Arc::new(choreo::memory::MemoryTransport::new());
    let instance = |name: &'static str| {
        let (subject, saga, transport) = (&subject, &saga, Arc::clone(&transport));
        async move {
            choreo::Service::builder(name, saga)
                .initiates::<OrderPlaced>()
                .store(subject.open().await)
                .build()
                .unwrap()
                .run(transport)
                .await
        }
    };

    let first = instance("orders").await.unwrap();
    let refused = instance("orders").await.err().unwrap();
    assert!(
        matches!(&refused, choreo::RunError::AlreadyRunning(_)),
        "{refused:?}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("another instance of service `orders` is running on this SQLite file")
            && message.contains("postgres://"),
        "{message}"
    );
    let other = instance("billing").await.unwrap();

    first.kill();
    let again = instance("orders").await.unwrap();
    drop((again, other));
}

//! The store conformance suite on PostgreSQL, and what opening a `postgres://` store says
//! when it cannot. Every test takes a database of its own on the server the test binary
//! shares (`PostgresServer::shared`: a container, or `CHOREO_POSTGRES_URL`).
#![cfg(feature = "postgres")]

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo::postgres::sqlx::{self, Connection};
use choreo::postgres::{PostgresExt, PostgresStore, PostgresTransaction};
use choreo::{Event, OpenStoreError, Saga, Service, Store, StoreTransaction, StoreUrl, UrlError};
use choreo_testkit::store_conformance::StoreSubject;
use choreo_testkit::PostgresServer;
use serde::{Deserialize, Serialize};

/// A database of the test's own; every `open` is a new store (a new pool) on it, as a
/// restarted process opens it.
struct Postgres {
    url: String,
}

#[choreo::async_trait]
impl StoreSubject for Postgres {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(open(&self.url).await)
    }

    async fn write(&self, transaction: &mut Box<dyn StoreTransaction>, key: &str) {
        let transaction = (&mut **transaction as &mut dyn Any)
            .downcast_mut::<PostgresTransaction>()
            .unwrap_or_else(|| panic!("the PostgreSQL store began another kind of transaction"));
        sqlx::query("INSERT INTO business (key) VALUES ($1)")
            .bind(key)
            .execute(transaction.connection())
            .await
            .unwrap_or_else(|error| panic!("business write: {error}"));
    }

    async fn written(&self, _store: &Arc<dyn Store>, key: &str) -> bool {
        written(&self.url, key).await
    }
}

async fn postgres() -> Postgres {
    let url = database().await;
    let mut connection = connect(&url).await;
    sqlx::query("CREATE TABLE business (key TEXT PRIMARY KEY)")
        .execute(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("creating the business table: {error}"));
    Postgres { url }
}

choreo_testkit::store_conformance_tests!(postgres);
choreo_testkit::shared_store_conformance_tests!(postgres);

/// A fresh database on the shared server.
async fn database() -> String {
    let server = PostgresServer::shared()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    server
        .database()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

async fn open(url: &str) -> PostgresStore {
    let url = StoreUrl::parse(url).unwrap_or_else(|error| panic!("{error}"));
    PostgresStore::open(&url)
        .await
        .unwrap_or_else(|error| panic!("open: {error}"))
}

async fn connect(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|error| panic!("connecting to {url}: {error}"))
}

async fn written(url: &str, key: &str) -> bool {
    let mut connection = connect(url).await;
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM business WHERE key = $1)")
        .bind(key)
        .fetch_one(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("reading the business table: {error}"))
}

/// `url` with its password replaced by `password`.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (userinfo, tail) = rest
        .split_once('@')
        .unwrap_or_else(|| panic!("the server's URL names no user: {url}"));
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    format!("{scheme}://{user}:{password}@{tail}")
}

/// `url` with its path replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    format!("{scheme}://{authority}/{database}")
}

async fn open_error(url: &str) -> OpenStoreError {
    let parsed = StoreUrl::parse(url).unwrap_or_else(|error| panic!("{error}"));
    match PostgresStore::open(&parsed).await {
        Ok(store) => panic!("opening {url} should fail, it opened {store:?}"),
        Err(error) => error,
    }
}

/// Neither the message, its causes nor the debug form hold `secret`.
fn assert_hides(error: &OpenStoreError, secret: &str) {
    let mut printed = vec![error.to_string(), format!("{error:?}")];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        printed.push(cause.to_string());
        source = cause.source();
    }
    for text in printed {
        assert!(!text.contains(secret), "the password shows in: {text}");
    }
}

#[tokio::test]
async fn an_unknown_option_or_a_bad_value_is_named_without_the_password() {
    for (url, option) in [
        (
            "postgres://app:hunter2@localhost/orders?pool.size=3",
            "pool.size",
        ),
        (
            "postgres://app:hunter2@localhost/orders?pool.max_connections=none",
            "pool.max_connections",
        ),
        (
            "postgresql://app:hunter2@localhost/orders?connect.timeout.ms=-1",
            "connect.timeout.ms",
        ),
    ] {
        let error = open_error(url).await;
        assert_hides(&error, "hunter2");
        match &error {
            OpenStoreError::Url(UrlError::InvalidOption {
                option: named, url, ..
            }) => {
                assert_eq!(named, option);
                assert!(url.contains("app:***@localhost/orders"), "{url}");
            }
            other => panic!("{url}: expected an invalid option, got {other:?}"),
        }
        let error = choreo::open_store(url)
            .await
            .err()
            .map(|error| error.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|error| error.contains(option) && !error.contains("hunter2")),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_an_open_error_within_the_connect_timeout() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port()
    };
    let timeout = Duration::from_millis(700);
    let url = format!(
        "postgres://app:hunter2@127.0.0.1:{port}/orders?connect.timeout.ms={}",
        timeout.as_millis()
    );
    let started = Instant::now();
    let error = open_error(&url).await;
    let waited = started.elapsed();
    assert!(
        waited < timeout * 3,
        "gave up after {waited:?}, timeout {timeout:?}"
    );
    assert_hides(&error, "hunter2");
    assert!(matches!(error, OpenStoreError::Open { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "no PostgreSQL server answered at 127.0.0.1:{port} within 700ms: connection refused"
        )),
        "{message}"
    );
    assert!(message.contains("app:***@127.0.0.1"), "{message}");
}

#[tokio::test]
async fn a_wrong_password_is_refused_without_showing_it() {
    let url = with_password(&database().await, "not-the-password-7f3a");
    let started = Instant::now();
    let error = open_error(&url).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_hides(&error, "not-the-password-7f3a");
    assert!(matches!(error, OpenStoreError::Open { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("refused to log in user"), "{message}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_database_is_named() {
    let url = with_database(&database().await, "choreo_no_such_database");
    let error = open_error(&url).await;
    assert!(matches!(error, OpenStoreError::Open { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("has no database `choreo_no_such_database`"),
        "{message}"
    );
}

/// PostgreSQL 15 lets only the schema's owner create tables in `public` by default: a role
/// that may connect but not create is told what it lacks.
#[tokio::test]
async fn a_role_that_may_not_create_tables_is_told_so() {
    let url = database().await;
    let role = format!("choreo_reader_{}", uuid::Uuid::now_v7().simple());
    let mut connection = connect(&url).await;
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'reader-pw-3c1d'"),
        format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let as_reader = {
        let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", &url));
        let tail = rest.split_once('@').map_or(rest, |(_, tail)| tail);
        format!("{scheme}://{role}:reader-pw-3c1d@{tail}")
    };
    let error = open_error(&as_reader).await;
    assert_hides(&error, "reader-pw-3c1d");
    let message = error.to_string();
    assert!(
        message.contains("cannot create or migrate choreo's tables"),
        "{message}"
    );
    assert!(message.contains("needs the CREATE privilege"), "{message}");
}

#[tokio::test]
async fn open_store_opens_postgres_and_postgresql_urls() {
    let url = database().await;
    let store = choreo::open_store(&url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(store.name(), "postgres");
    assert!(store.is_durable());
    let opened = open(&url).await;
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_owned())
        .unwrap_or_else(|| panic!("the server's URL has no password: {url}"));
    for printed in [format!("{opened:?}"), format!("{:?}", opened.config())] {
        assert!(printed.contains(":***@"), "{printed}");
        assert!(!printed.contains(&format!(":{password}@")), "{printed}");
    }
    let other = url.replacen("postgres://", "postgresql://", 1);
    let store = choreo::open_store(&other)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(store.name(), "postgres");
}

#[tokio::test]
async fn the_schema_is_migrated_once_and_tracked_apart_from_the_application_s_migrations() {
    let url = database().await;
    let (first, second) = tokio::join!(open(&url), open(&url));
    drop((first, second));
    let _third = open(&url).await;
    let mut connection = connect(&url).await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        tables,
        [
            "choreo_inbox",
            "choreo_migrations",
            "choreo_outbox",
            "choreo_sagas",
            "choreo_steps"
        ]
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM choreo_migrations WHERE success")
        .fetch_one(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // The saga state, then what several instances of a service need.
    assert_eq!(applied, 2);
}

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: i64,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.OrderPlaced.v1";
}

#[derive(Serialize, Deserialize)]
struct OrderConfirmed {
    order_id: i64,
}

impl Event for OrderConfirmed {
    const TYPE: &'static str = "orders.OrderConfirmed.v1";
}

/// A caller's own row and the saga it starts commit together through `tx.postgres()`, or
/// not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_transaction_writes_business_rows_through_postgres_ext() {
    let subject = postgres().await;
    let store = Arc::new(open(&subject.url).await);
    let saga = Saga::new("orders.saga")
        .timeout(Duration::from_secs(30))
        .completes_on::<OrderConfirmed>();
    let transport = choreo::connect(&format!("memory://{}", uuid::Uuid::now_v7().simple()))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let orders = Service::builder("orders", &saga)
        .initiates::<OrderPlaced>()
        .store(Arc::clone(&store) as Arc<dyn Store>)
        .build()
        .unwrap_or_else(|error| panic!("{error}"))
        .run(transport)
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    let mut tx = orders.begin();
    {
        let mut db = tx
            .postgres()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        sqlx::query("INSERT INTO business (key) VALUES ('order 7')")
            .execute(db.connection())
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let saga_id = tx
        .start_saga(OrderPlaced { order_id: 7 })
        .unwrap_or_else(|error| panic!("{error}"));
    tx.commit().await.unwrap_or_else(|error| panic!("{error}"));
    assert!(written(&subject.url, "order 7").await);
    let loaded = store
        .load("orders", saga_id, None)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(loaded.record.is_some_and(|record| record.initiated_here));

    let mut tx = orders.begin();
    {
        let mut db = tx
            .postgres()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        sqlx::query("INSERT INTO business (key) VALUES ('order 8')")
            .execute(db.connection())
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
    let rolled_back = tx
        .start_saga(OrderPlaced { order_id: 8 })
        .unwrap_or_else(|error| panic!("{error}"));
    tx.rollback()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(!written(&subject.url, "order 8").await);
    let loaded = store
        .load("orders", rolled_back, None)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(loaded.record, None);
    orders.shutdown().await;
}

/// `postgres()` on a service whose store is not PostgreSQL names the store it has.
#[tokio::test]
async fn postgres_ext_on_another_store_names_it() {
    let saga = Saga::new("orders.saga").completes_on::<OrderConfirmed>();
    let transport = choreo::connect(&format!("memory://{}", uuid::Uuid::now_v7().simple()))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let orders = Service::builder("orders", &saga)
        .initiates::<OrderPlaced>()
        .build()
        .unwrap_or_else(|error| panic!("{error}"))
        .run(transport)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let tx = orders.begin();
    let error = tx
        .postgres()
        .await
        .err()
        .unwrap_or_else(|| panic!("memory has no transactions"));
    assert!(error.is_unsupported(), "{error}");
    assert!(error.to_string().contains("memory"), "{error}");
    drop(tx);
    orders.shutdown().await;
}

/// A server of the test's own, restarted under an open store: committed state is still
/// there, and the store's next calls succeed although every pooled connection broke with
/// the restart (the store takes another, or opens one, instead of failing the call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_goes_on_after_the_server_restarts() {
    let server = PostgresServer::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let url = format!(
        "{}?pool.max_connections=3",
        server
            .database()
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    );
    let store = open(&url).await;
    let saga = choreo::SagaId::new();
    let commit = choreo::store::Commit {
        service: "payments".to_owned(),
        saga_id: saga,
        version: 0,
        changes: vec![choreo::store::JournalChange::Created(
            choreo::SagaRecord::new(
                saga,
                choreo::Deadline::after(std::time::SystemTime::now(), Duration::from_secs(30)),
            )
            .header(),
        )],
        handled: None,
        outbox: Vec::new(),
        recorded: std::time::SystemTime::now(),
    };
    store
        .commit(vec![commit], None)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    // Three connections in the pool, idle.
    let loads = (0..3).map(|_| store.load("payments", saga, None));
    for loaded in futures_util::future::join_all(loads).await {
        loaded.unwrap_or_else(|error| panic!("{error}"));
    }

    server
        .restart()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let loaded = store
        .load("payments", saga, None)
        .await
        .unwrap_or_else(|error| panic!("the first call after a restart: {error}"));
    assert!(
        loaded.record.is_some(),
        "the record did not survive the restart"
    );
    let loads = (0..3).map(|_| store.load("payments", saga, None));
    for loaded in futures_util::future::join_all(loads).await {
        loaded.unwrap_or_else(|error| panic!("{error}"));
    }
    drop(server);
}

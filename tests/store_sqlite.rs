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

#[async_trait::async_trait]
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

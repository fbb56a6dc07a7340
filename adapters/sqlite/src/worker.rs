//! The store's one connection and the work queued for it.
//!
//! Writes are queued, and a task on the runtime drains the queue while it is not empty, so
//! that the writes of every request that arrived meanwhile commit as one SQLite transaction
//! (a group commit); should one fail, each is applied again alone, so that only it fails. The
//! drainer first lets every task that is ready run, so that the handlings under way queue
//! their writes into its group, and it yields between groups: a group of dozens of writes
//! costs SQLite little more than one, while handing each group to a thread of its own cost
//! more than SQLite's work (measured in docs/benchmarks.md). A group runs on the runtime's
//! thread, like any short synchronous work; a paused clock does not advance meanwhile. A
//! handler's transaction holds the writing connection for itself: while it is open, other
//! requests' writes wait.
//!
//! Most loads are answered by the store's cache of sagas in flight, which only the worker
//! changes, once a write committed: a caller that stops waiting cannot leave it behind the
//! file. The others read on a second connection, at once, on the thread that asks: the
//! write-ahead log lets it read what was committed while the writer writes, and a saga's
//! previous handling has committed before its next one loads. The one slow operation of all,
//! checkpointing the log into the database file, runs on a thread of the store's own.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::SystemTime;

use choreo_core::store::{Commit, Purged, Sent};
use choreo_core::StoreError;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::cache::Cache;
use crate::marks::Marks;
use crate::schema;

/// A piece of user work on the connection, inside a handler's transaction; given `None`
/// when that transaction is no longer open. It answers its caller itself.
pub(crate) type Job = Box<dyn FnOnce(Option<&Connection>) + Send>;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What can be asked of the connection.
pub(crate) enum Request {
    /// Writes outside any handler's transaction, committed with the others of their drain.
    Write(Write),
    /// Opens handler transaction `id`, once the connection is free of others.
    Begin { id: u64, reply: Reply<()> },
    /// Runs user work inside transaction `id`; the job replies itself.
    Run { id: u64, job: Job },
    /// Applies `commits` inside transaction `id` and commits it.
    CommitIn {
        id: u64,
        commits: Vec<Commit>,
        reply: Reply<()>,
    },
    /// Rolls transaction `id` back.
    Rollback { id: u64, reply: Option<Reply<()>> },
}

impl Request {
    /// Whether it writes outside a handler's transaction, and so waits while one is open.
    fn writes(&self) -> bool {
        matches!(self, Self::Write(_) | Self::Begin { .. })
    }
}

/// The connection and what only the draining task touches.
struct Database {
    conn: Connection,
    /// The sagas in flight, kept as the file holds them: updated here, once a write
    /// committed, so that a caller that stopped waiting cannot leave it behind the file.
    cache: Arc<Cache>,
    /// The handler transaction holding the connection, if any.
    exclusive: Option<u64>,
    /// Writes waiting for it to end.
    deferred: VecDeque<Request>,
    /// Step outputs sent, to be marked so with their saga's next write.
    marks: Marks,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Request>,
    draining: bool,
}

/// The connections of one store and its queue; shared by the store and its transactions.
pub(crate) struct Worker {
    database: Mutex<Database>,
    reader: Mutex<Connection>,
    queue: Mutex<Queue>,
}

impl Worker {
    pub(crate) fn new(writer: Connection, reader: Connection, cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Self {
            database: Mutex::new(Database {
                conn: writer,
                cache,
                exclusive: None,
                deferred: VecDeque::new(),
                marks: Marks::default(),
            }),
            reader: Mutex::new(reader),
            queue: Mutex::default(),
        })
    }

    /// Runs `read` on the reading connection, now, on this thread.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Connection) -> T) -> T {
        read(&lock(&self.reader))
    }

    /// Queues `request`, and starts a drainer if nobody drains.
    pub(crate) fn submit(self: &Arc<Self>, request: Request) {
        self.queue_and_drain(request, false);
    }

    /// Queues `request` from a destructor, which may run while its runtime shuts down and
    /// refuses new tasks: a drainer that has to start starts on a thread of its own.
    pub(crate) fn submit_detached(self: &Arc<Self>, request: Request) {
        self.queue_and_drain(request, true);
    }

    fn queue_and_drain(self: &Arc<Self>, request: Request, detached: bool) {
        let mut queue = lock(&self.queue);
        queue.pending.push_back(request);
        if queue.draining {
            return;
        }
        queue.draining = true;
        drop(queue);
        let drainer = Drainer::new(self);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !detached => drop(runtime.spawn(drainer.run())),
            _ => drop(drainer),
        }
    }

    /// Asks `make`'s request and waits for its answer.
    pub(crate) async fn ask<T>(
        self: &Arc<Self>,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(make(reply));
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::new("the SQLite store's worker stopped")))
    }

    /// Processes what is queued, as one group; `false` once there was nothing, and then
    /// nobody drains any more.
    fn drain_once(&self) -> bool {
        let batch: VecDeque<Request> = {
            let mut queue = lock(&self.queue);
            if queue.pending.is_empty() {
                queue.draining = false;
                return false;
            }
            std::mem::take(&mut queue.pending)
        };

        let mut database = lock(&self.database);
        // A panic must not leave the queue without a drainer, nor the connection inside a
        // transaction nobody will end.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| database.process(batch)));
        if result.is_err() {
            tracing::error!(
                "the SQLite store's worker caught a panic; the requests of that batch failed"
            );
            if !database.conn.is_autocommit() {
                let _ = control(&database.conn, "ROLLBACK");
            }
            database.exclusive = None;
            let waiting = std::mem::take(&mut database.deferred);
            let mut queue = lock(&self.queue);
            for request in waiting.into_iter().rev() {
                queue.pending.push_front(request);
            }
        }
        true
    }
}

/// A store dropped writes the marks still waiting: a restart then sends those outputs no
/// more.
impl Drop for Worker {
    fn drop(&mut self) {
        let database = match self.database.get_mut() {
            Ok(database) => database,
            Err(poisoned) => poisoned.into_inner(),
        };
        let waiting = database.marks.take();
        if waiting.is_empty() || !database.conn.is_autocommit() {
            return;
        }
        let written = control(&database.conn, "BEGIN IMMEDIATE").and_then(|()| {
            for (service, sent) in &waiting {
                schema::mark_sent(&database.conn, service, sent)?;
            }
            control(&database.conn, "COMMIT")
        });
        if let Err(error) = written {
            let _ = control(&database.conn, "ROLLBACK");
            tracing::warn!(%error, "cannot mark sent events in the SQLite store; a restart sends them again");
        }
    }
}

/// Drains a worker's queue until it is empty: as a task on the runtime, or, should the
/// runtime drop that task first (it is shutting down) or there be none, on a thread of its
/// own, so that queued requests are never left without a drainer. Between groups it holds
/// the worker weakly: a store whose every handle is dropped goes at once, writing its marks.
struct Drainer(Option<Weak<Worker>>);

impl Drainer {
    fn new(worker: &Arc<Worker>) -> Self {
        Self(Some(Arc::downgrade(worker)))
    }

    async fn run(mut self) {
        while let Some(worker) = &self.0 {
            // Every task ready now runs first: the handlings under way queue their writes
            // into this group.
            tokio::task::yield_now().await;
            if !worker.upgrade().is_some_and(|worker| worker.drain_once()) {
                self.0 = None;
            }
        }
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        if let Some(worker) = self.0.take().and_then(|worker| worker.upgrade()) {
            drop(std::thread::spawn(move || while worker.drain_once() {}));
        }
    }
}

impl Database {
    /// Works through `batch`; writes outside a handler's transaction commit as one group.
    fn process(&mut self, mut batch: VecDeque<Request>) {
        let mut group = Group::default();
        while let Some(request) = batch.pop_front() {
            if let Some(owner) = self.exclusive {
                if request.writes() {
                    self.deferred.push_back(request);
                    continue;
                }
                if let Some(ended) = self.in_transaction(owner, request) {
                    debug_assert_eq!(ended, owner);
                    self.exclusive = None;
                    // What waited goes first now.
                    while let Some(waiting) = self.deferred.pop_back() {
                        batch.push_front(waiting);
                    }
                }
                continue;
            }
            match request {
                Request::Write(Write::MarkSent {
                    service,
                    sent,
                    reply: Some(reply),
                }) => {
                    // The runtime's view changes now; the file's with the saga's next write.
                    self.cache.sent(&service, &sent);
                    let others = self.marks.add(&service, sent);
                    if others.is_empty() {
                        let _ = reply.send(Ok(()));
                    } else {
                        group.writes.push(Write::MarkSent {
                            service,
                            sent: others,
                            reply: Some(reply),
                        });
                    }
                }
                Request::Write(Write::Flush { reply }) => {
                    self.write_marks(&mut group);
                    group.writes.push(Write::Flush { reply });
                }
                Request::Write(write) => group.writes.push(write),
                Request::Begin { id, reply } => {
                    self.finish(&mut group);
                    let begun = control(&self.conn, "BEGIN IMMEDIATE").map_err(store_error);
                    let began = begun.is_ok();
                    if reply.send(begun).is_err() {
                        // Its caller is gone: nobody would ever end it.
                        if began {
                            let _ = control(&self.conn, "ROLLBACK");
                        }
                    } else if began {
                        self.exclusive = Some(id);
                    }
                }
                // Its transaction is no longer open: never run user work outside one.
                Request::Run { job, .. } => job(None),
                Request::CommitIn { reply, .. } => {
                    let _ = reply.send(Err(StoreError::new(
                        "the handler's transaction is no longer open",
                    )));
                }
                Request::Rollback { id, reply } => {
                    self.forget_begin(id);
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        self.finish(&mut group);
    }

    /// Adds every waiting mark to `group`, to be written on its own.
    fn write_marks(&mut self, group: &mut Group) {
        for (service, sent) in self.marks.take() {
            group.writes.push(Write::MarkSent {
                service,
                sent,
                reply: None,
            });
        }
    }

    /// Commits `group`, with the marks that are due: before a handler's transaction begins,
    /// and at the end of a batch. Not while such a transaction holds the connection: they
    /// would be tried inside it, fail, and be lost.
    fn finish(&mut self, group: &mut Group) {
        if self.exclusive.is_none() && self.marks.due() {
            self.write_marks(group);
        }
        group.finish(&self.conn, &self.cache, &mut self.marks);
    }

    /// Drops a `Begin` of transaction `id` still waiting: its transaction was dropped
    /// before it began.
    fn forget_begin(&mut self, id: u64) {
        self.deferred.retain(
            |request| !matches!(request, Request::Begin { id: waiting, .. } if *waiting == id),
        );
    }

    /// Serves `request` while handler transaction `owner` holds the connection; returns
    /// the transaction's id once it ended.
    fn in_transaction(&mut self, owner: u64, request: Request) -> Option<u64> {
        match request {
            Request::Run { id, job } if id == owner => {
                job(Some(&self.conn));
                None
            }
            Request::CommitIn { id, commits, reply } if id == owner => {
                self.cache.writing(&commits);
                let applied = commits
                    .iter()
                    .try_for_each(|commit| schema::apply(&self.conn, commit, None))
                    .and_then(|()| control(&self.conn, "COMMIT"));
                match applied {
                    Ok(()) => {
                        self.cache.committed(commits);
                        let _ = reply.send(Ok(()));
                    }
                    Err(error) => {
                        let _ = control(&self.conn, "ROLLBACK");
                        let _ = reply.send(Err(store_error(error)));
                    }
                }
                Some(owner)
            }
            Request::Rollback { id, reply } if id == owner => {
                let rolled_back = control(&self.conn, "ROLLBACK").map_err(store_error);
                if let Some(reply) = reply {
                    let _ = reply.send(rolled_back);
                }
                Some(owner)
            }
            // Another transaction's work, which cannot be open: answered as such.
            Request::Run { job, .. } => {
                job(None);
                None
            }
            Request::CommitIn { reply, .. } => {
                let _ = reply.send(Err(StoreError::new(
                    "the handler's transaction is no longer open",
                )));
                None
            }
            Request::Rollback { id, reply } => {
                self.forget_begin(id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                None
            }
            writes => {
                self.deferred.push_back(writes);
                None
            }
        }
    }
}

/// One request's writes, applied with the others of its drain.
pub(crate) enum Write {
    Commit {
        commits: Vec<Commit>,
        reply: Reply<()>,
    },
    /// Marks sent; with no reply, waiting marks written on their own.
    MarkSent {
        service: String,
        sent: Vec<Sent>,
        reply: Option<Reply<()>>,
    },
    /// Writes every waiting mark, and answers once they are.
    Flush { reply: Reply<()> },
    Purge {
        service: String,
        before: SystemTime,
        reply: Reply<Purged>,
    },
}

impl Write {
    /// Applies the write inside the caller's transaction; a purge says what it deleted.
    /// A commit of a saga whose marks wait writes them with its row: its list of unsent
    /// outputs is written whole, as the cache holds it.
    fn apply(
        &self,
        conn: &Connection,
        cache: &Cache,
        marks: &Marks,
    ) -> rusqlite::Result<Option<Purged>> {
        match self {
            Self::Commit { commits, .. } => {
                cache.writing(commits);
                commits
                    .iter()
                    .try_for_each(|commit| {
                        let unsent = marks
                            .waiting_for(&commit.service, commit.saga_id)
                            .then(|| cache.unsent(&commit.service, commit.saga_id))
                            .flatten();
                        schema::apply(conn, commit, unsent)
                    })
                    .map(|()| None)
            }
            Self::MarkSent { service, sent, .. } => {
                schema::mark_sent(conn, service, sent).map(|()| None)
            }
            Self::Flush { .. } => Ok(None),
            Self::Purge {
                service, before, ..
            } => schema::purge(conn, service, *before).map(Some),
        }
    }

    /// Forgets the waiting marks this write wrote, once it committed.
    fn wrote_marks(&self, cache: &Cache, marks: &mut Marks) {
        if let Self::Commit { commits, .. } = self {
            for commit in commits {
                if marks.waiting_for(&commit.service, commit.saga_id)
                    && cache.holds(&commit.service, commit.saga_id)
                {
                    marks.written(&commit.service, commit.saga_id);
                }
            }
        }
    }

    /// Answers the request: `applied` once its transaction committed, or why not. What
    /// committed is applied to `cache` first.
    fn answer(self, applied: Result<Option<Purged>, StoreError>, cache: &Cache) {
        let committed = applied.is_ok();
        let _ = match self {
            Self::Commit { commits, reply } => {
                if committed {
                    cache.committed(commits);
                }
                reply.send(applied.map(drop)).is_ok()
            }
            Self::MarkSent {
                service,
                sent,
                reply,
            } => {
                if committed {
                    cache.sent(&service, &sent);
                }
                match (reply, applied) {
                    (Some(reply), applied) => reply.send(applied.map(drop)).is_ok(),
                    (None, Err(error)) => {
                        tracing::warn!(%service, %error, "cannot mark sent events in the SQLite store; a restart sends them again");
                        false
                    }
                    (None, Ok(_)) => true,
                }
            }
            Self::Flush { reply } => reply.send(applied.map(drop)).is_ok(),
            Self::Purge {
                service,
                before,
                reply,
            } => {
                if committed {
                    cache.purged(&service, before);
                }
                reply.send(applied.map(Option::unwrap_or_default)).is_ok()
            }
        };
    }
}

/// The writes of one drain: committed as one transaction. Should one of them fail, the
/// group is rolled back and each write applied again in a transaction of its own, so that
/// only the failing one fails.
#[derive(Default)]
struct Group {
    writes: Vec<Write>,
}

impl Group {
    /// Commits the group and answers its requests.
    fn finish(&mut self, conn: &Connection, cache: &Cache, marks: &mut Marks) {
        let writes = std::mem::take(&mut self.writes);
        if writes.is_empty() {
            return;
        }
        if let Err(error) = control(conn, "BEGIN IMMEDIATE") {
            let error = error.to_string();
            for write in writes {
                write.answer(
                    Err(StoreError::new(format!(
                        "cannot begin a transaction: {error}"
                    ))),
                    cache,
                );
            }
            return;
        }
        let mut values = Vec::with_capacity(writes.len());
        for write in &writes {
            match write.apply(conn, cache, marks) {
                Ok(value) => values.push(value),
                Err(_) => {
                    let _ = control(conn, "ROLLBACK");
                    for write in writes {
                        alone(conn, write, cache, marks);
                    }
                    return;
                }
            }
        }
        match control(conn, "COMMIT") {
            Ok(()) => {
                for (write, value) in writes.into_iter().zip(values) {
                    write.wrote_marks(cache, marks);
                    write.answer(Ok(value), cache);
                }
            }
            Err(error) => {
                let _ = control(conn, "ROLLBACK");
                let error = error.to_string();
                for write in writes {
                    write.answer(
                        Err(StoreError::new(format!("commit failed: {error}"))),
                        cache,
                    );
                }
            }
        }
    }
}

/// Applies `write` in a transaction of its own, and answers it.
fn alone(conn: &Connection, write: Write, cache: &Cache, marks: &mut Marks) {
    let applied = control(conn, "BEGIN IMMEDIATE").and_then(|()| {
        let applied = write.apply(conn, cache, marks);
        match &applied {
            Ok(_) => control(conn, "COMMIT")?,
            Err(_) => control(conn, "ROLLBACK")?,
        }
        applied
    });
    if applied.is_err() && !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    } else if applied.is_ok() {
        write.wrote_marks(cache, marks);
    }
    write.answer(applied.map_err(store_error), cache);
}

/// Runs a transaction control statement, prepared once per connection.
fn control(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(drop)
}

fn store_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::new(error)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

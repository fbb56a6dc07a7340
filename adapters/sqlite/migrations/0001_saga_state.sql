-- choreo's saga state, per service: the journal (sagas and their steps), the inbox and the
-- outbox. Ids are UUIDs in their hyphenated text form; instants are nanoseconds since the
-- Unix epoch; events are their CloudEvents structured-mode JSON.

CREATE TABLE choreo_sagas (
    service                   TEXT    NOT NULL,
    saga_id                   TEXT    NOT NULL,
    deadline                  INTEGER NOT NULL,
    status                    TEXT    NOT NULL CHECK (status IN ('active', 'completed', 'aborted')),
    abort_reason              TEXT             CHECK (abort_reason IN ('rejected', 'timed_out', 'dead_lettered')),
    initiated_here            INTEGER NOT NULL,
    abort_published           INTEGER NOT NULL,
    compensation_acknowledged INTEGER NOT NULL,
    -- The abort this service compensates for, once one arrived.
    abort_event               TEXT,
    PRIMARY KEY (service, saga_id)
) WITHOUT ROWID;

-- Purge (finished sagas by deadline). Recovery reads a service's rows by their key: it runs
-- once, at start, and an index on what changes with every handling would cost every write.
CREATE INDEX choreo_sagas_by_deadline ON choreo_sagas (service, deadline);

CREATE TABLE choreo_steps (
    service            TEXT    NOT NULL,
    saga_id            TEXT    NOT NULL,
    position           INTEGER NOT NULL,
    -- The event the step handled; NULL for a saga's start.
    input_id           TEXT,
    -- The event it emitted: what its compensation receives.
    output             TEXT    NOT NULL,
    withheld           INTEGER NOT NULL,
    -- Until published, the step's row is its output's outbox entry.
    published          INTEGER NOT NULL,
    compensation       TEXT    NOT NULL CHECK (compensation IN ('pending', 'compensated', 'failed', 'not_required')),
    compensation_error TEXT,
    PRIMARY KEY (service, saga_id, position)
) WITHOUT ROWID;

-- Keyed by saga first: a saga's handled events are read together.
CREATE TABLE choreo_inbox (
    service  TEXT    NOT NULL,
    saga_id  TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    -- The event's saga deadline: the inbox keeps it until the retention after it.
    deadline INTEGER NOT NULL,
    PRIMARY KEY (service, saga_id, event_id)
) WITHOUT ROWID;

CREATE INDEX choreo_inbox_by_deadline ON choreo_inbox (service, deadline);

-- Runtime events (aborts, acknowledgements) and dead letters not yet sent.
CREATE TABLE choreo_outbox (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    service            TEXT NOT NULL,
    saga_id            TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('event', 'dead_letter')),
    envelope           TEXT NOT NULL,
    dead_letter_reason TEXT,
    UNIQUE (service, kind, event_id)
);

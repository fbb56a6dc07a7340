-- choreo's saga state (the choreo-postgres crate applies this at open; its migrations table is
-- `choreo_migrations`). Every row is keyed by the service's name first, so that several
-- services share one database. Instants are nanoseconds since the Unix epoch; events are
-- their CloudEvents structured-mode JSON text, exactly as choreo encodes them.
-- Never edit this file once released: add a new migration instead (sqlx checks checksums).

-- The journal: one record per service and saga.
CREATE TABLE choreo_sagas (
    service                   TEXT    NOT NULL,
    saga_id                   UUID    NOT NULL,
    deadline_ns               BIGINT  NOT NULL,
    status                    TEXT    NOT NULL
        CHECK (status IN ('active', 'completed', 'aborted')),
    abort_reason              TEXT
        CHECK (abort_reason IN ('rejected', 'timed_out', 'dead_lettered')),
    initiated_here            BOOLEAN NOT NULL,
    abort_published           BOOLEAN NOT NULL,
    compensation_acknowledged BOOLEAN NOT NULL,
    -- The abort this service compensates for, once one arrived.
    abort_event               TEXT,
    PRIMARY KEY (service, saga_id),
    CHECK ((status = 'aborted') = (abort_reason IS NOT NULL))
);

-- Recovery: deadline timers to arm again, compensations to resume.
CREATE INDEX choreo_sagas_timers ON choreo_sagas (service)
    WHERE status = 'active' AND NOT abort_published;
CREATE INDEX choreo_sagas_unfinished ON choreo_sagas (service)
    WHERE status = 'aborted' AND NOT compensation_acknowledged;
-- Purge: finished sagas by deadline.
CREATE INDEX choreo_sagas_finished ON choreo_sagas (service, deadline_ns)
    WHERE status = 'completed' OR (status = 'aborted' AND compensation_acknowledged);

-- The steps of each record, in order; a step's output is published from here (the journal
-- is its outbox until `published`).
CREATE TABLE choreo_steps (
    service              TEXT    NOT NULL,
    saga_id              UUID    NOT NULL,
    position             INTEGER NOT NULL CHECK (position >= 0),
    -- The event the step handled; NULL for the saga start.
    input_id             UUID,
    output               TEXT    NOT NULL,
    withheld             BOOLEAN NOT NULL,
    published            BOOLEAN NOT NULL,
    compensation         TEXT    NOT NULL
        CHECK (compensation IN ('pending', 'compensated', 'failed', 'not_required')),
    compensation_failure TEXT,
    PRIMARY KEY (service, saga_id, position),
    FOREIGN KEY (service, saga_id) REFERENCES choreo_sagas (service, saga_id) ON DELETE CASCADE,
    CHECK ((compensation = 'failed') = (compensation_failure IS NOT NULL))
);

-- Recovery: step outputs not yet published.
CREATE INDEX choreo_steps_unsent ON choreo_steps (service)
    WHERE NOT published AND NOT withheld;

-- The inbox: events each service handled, kept until their saga's deadline is purged.
CREATE TABLE choreo_inbox (
    service     TEXT   NOT NULL,
    event_id    UUID   NOT NULL,
    deadline_ns BIGINT NOT NULL,
    PRIMARY KEY (service, event_id)
);

-- Purge: inbox ids by deadline.
CREATE INDEX choreo_inbox_deadline ON choreo_inbox (service, deadline_ns);

-- The outbox: runtime events (aborts, acknowledgements) and dead letters a service must still
-- send; a row is deleted once sent.
CREATE TABLE choreo_outbox (
    service  TEXT   NOT NULL,
    event_id UUID   NOT NULL,
    kind     TEXT   NOT NULL CHECK (kind IN ('event', 'dead_letter')),
    saga_id  UUID   NOT NULL,
    -- Recording order, so that recovery sends them oldest first.
    seq      BIGINT GENERATED ALWAYS AS IDENTITY,
    -- Why a dead letter is one.
    reason   TEXT,
    envelope TEXT   NOT NULL,
    PRIMARY KEY (service, event_id, kind),
    CHECK ((kind = 'dead_letter') = (reason IS NOT NULL))
);

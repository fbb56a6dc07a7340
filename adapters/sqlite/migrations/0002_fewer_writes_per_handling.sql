-- Fewer rows, indexes and pages written per handling.
--
-- The inbox moves into its saga's row: `handled` lists the ids of the events handled for the
-- saga, separated by spaces. A handling then writes one row for its saga (plus one per step
-- it adds) instead of one there and two for its inbox record, and the purge deletes a saga's
-- inbox ids with its row. A saga this service handled events of without keeping a record of
-- it (`recorded` = 0) has a row for its inbox ids only.
--
-- Which step outputs are not yet published moves there too (`unsent`), so that marking one
-- sent rewrites the saga's small row, which its handlings write anyway, rather than the
-- step's, which holds the whole event.
--
-- The CHECKs list their values with OR: SQLite builds a temporary index for every statement
-- that checks an `IN (...)` list, which cost more than the rest of the statement.

CREATE TABLE choreo_sagas_2 (
    service                   TEXT    NOT NULL,
    saga_id                   TEXT    NOT NULL,
    deadline                  INTEGER NOT NULL,
    -- 0: a row for the inbox ids only; the service keeps no record of the saga.
    recorded                  INTEGER NOT NULL,
    status                    TEXT    NOT NULL CHECK (status = 'active' OR status = 'completed' OR status = 'aborted'),
    abort_reason              TEXT             CHECK (abort_reason = 'rejected' OR abort_reason = 'timed_out' OR abort_reason = 'dead_lettered'),
    initiated_here            INTEGER NOT NULL,
    abort_published           INTEGER NOT NULL,
    compensation_acknowledged INTEGER NOT NULL,
    -- The abort this service compensates for, once one arrived.
    abort_event               TEXT,
    -- Ids of the events handled for the saga, separated by spaces.
    handled                   TEXT    NOT NULL,
    -- Positions of the steps whose output is not yet published, separated by spaces: until
    -- then, the step's row is its output's outbox entry.
    unsent                    TEXT    NOT NULL,
    PRIMARY KEY (service, saga_id)
) WITHOUT ROWID;

INSERT INTO choreo_sagas_2
SELECT s.service, s.saga_id, s.deadline, 1, s.status, s.abort_reason, s.initiated_here,
       s.abort_published, s.compensation_acknowledged, s.abort_event,
       COALESCE((SELECT group_concat(i.event_id, ' ') FROM choreo_inbox i
                 WHERE i.service = s.service AND i.saga_id = s.saga_id), ''),
       COALESCE((SELECT group_concat(t.position, ' ') FROM choreo_steps t
                 WHERE t.service = s.service AND t.saga_id = s.saga_id
                   AND t.published = 0 AND t.withheld = 0), '')
FROM choreo_sagas s;

INSERT INTO choreo_sagas_2
SELECT i.service, i.saga_id, max(i.deadline), 0, 'active', NULL, 0, 0, 0, NULL,
       group_concat(i.event_id, ' '), ''
FROM choreo_inbox i
WHERE NOT EXISTS (SELECT 1 FROM choreo_sagas s WHERE s.service = i.service AND s.saga_id = i.saga_id)
GROUP BY i.service, i.saga_id;

DROP TABLE choreo_inbox;
DROP TABLE choreo_sagas;
ALTER TABLE choreo_sagas_2 RENAME TO choreo_sagas;
-- Purge, by deadline. A saga's deadline never changes, so handlings never write this index
-- after the row's first.
CREATE INDEX choreo_sagas_by_deadline ON choreo_sagas (service, deadline);

-- A rowid table: steps are appended at its end, in the order they are written, rather than
-- inserted among the steps of the other sagas in flight, which spreads a commit's writes
-- over many pages. Its unique key finds a saga's steps.
CREATE TABLE choreo_steps_2 (
    seq                INTEGER PRIMARY KEY,
    service            TEXT    NOT NULL,
    saga_id            TEXT    NOT NULL,
    position           INTEGER NOT NULL,
    -- The event the step handled; NULL for a saga's start.
    input_id           TEXT,
    -- The event it emitted: what its compensation receives.
    output             TEXT    NOT NULL,
    withheld           INTEGER NOT NULL,
    compensation       TEXT    NOT NULL CHECK (compensation = 'pending' OR compensation = 'compensated' OR compensation = 'failed' OR compensation = 'not_required'),
    compensation_error TEXT,
    UNIQUE (service, saga_id, position)
);

INSERT INTO choreo_steps_2 (service, saga_id, position, input_id, output, withheld,
                            compensation, compensation_error)
SELECT service, saga_id, position, input_id, output, withheld, compensation, compensation_error
FROM choreo_steps;
DROP TABLE choreo_steps;
ALTER TABLE choreo_steps_2 RENAME TO choreo_steps;

CREATE TABLE choreo_outbox_2 (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    service            TEXT NOT NULL,
    saga_id            TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind = 'event' OR kind = 'dead_letter'),
    envelope           TEXT NOT NULL,
    dead_letter_reason TEXT,
    UNIQUE (service, kind, event_id)
);

INSERT INTO choreo_outbox_2 SELECT * FROM choreo_outbox;
DROP TABLE choreo_outbox;
ALTER TABLE choreo_outbox_2 RENAME TO choreo_outbox;

-- Several instances of one service on one database: a saga's handlings are serialised by a
-- version check on its record, and the work a gone instance held (a deadline timer, an
-- event recorded but not sent) is claimed by another one.
-- Never edit this file once released: add a new migration instead (sqlx checks checksums).

-- How many commits changed the record; a commit made from an older version is refused.
ALTER TABLE choreo_sagas ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
-- Until when an instance claimed the saga's overdue deadline.
ALTER TABLE choreo_sagas ADD COLUMN claimed_until_ns BIGINT;

-- When the event was recorded (its `time`; NULL for rows of the first schema: long ago),
-- and until when an instance claimed it for sending.
ALTER TABLE choreo_steps ADD COLUMN recorded_ns BIGINT;
ALTER TABLE choreo_steps ADD COLUMN claimed_until_ns BIGINT;
ALTER TABLE choreo_outbox ADD COLUMN recorded_ns BIGINT;
ALTER TABLE choreo_outbox ADD COLUMN claimed_until_ns BIGINT;

-- Recovery and take-over: the deadlines of active sagas, in order.
DROP INDEX choreo_sagas_timers;
CREATE INDEX choreo_sagas_deadlines ON choreo_sagas (service, deadline_ns)
    WHERE status = 'active' AND NOT abort_published;

-- Fails the statement that calls it as a serialization failure: a commit made from an
-- outdated version of a saga's record applies nothing.
CREATE FUNCTION choreo_conflict(detail TEXT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = detail;
END
$$;

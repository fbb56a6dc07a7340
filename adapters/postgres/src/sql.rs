//! The store's statements. Each is one round trip; batches travel as arrays, unnested.

/// A saga's record, its steps and whether an event is in the inbox, in one row. `$1`
/// service, `$2` saga, `$3` event (may be NULL). The saga's columns are NULL when the
/// service has no record; the step arrays are NULL when it has no steps.
pub(crate) const LOAD: &str = "
SELECT
    EXISTS (SELECT 1 FROM choreo_inbox AS i WHERE i.service = $1 AND i.event_id = $3) AS handled,
    s.deadline_ns, s.status, s.abort_reason, s.initiated_here, s.abort_published,
    s.compensation_acknowledged, s.abort_event, s.version,
    t.positions, t.inputs, t.outputs, t.withheld, t.published, t.compensations, t.failures
FROM (SELECT) AS one
LEFT JOIN choreo_sagas AS s ON s.service = $1 AND s.saga_id = $2
LEFT JOIN LATERAL (
    SELECT
        array_agg(st.position ORDER BY st.position) AS positions,
        array_agg(st.input_id ORDER BY st.position) AS inputs,
        array_agg(st.output ORDER BY st.position) AS outputs,
        array_agg(st.withheld ORDER BY st.position) AS withheld,
        array_agg(st.published ORDER BY st.position) AS published,
        array_agg(st.compensation ORDER BY st.position) AS compensations,
        array_agg(st.compensation_failure ORDER BY st.position) AS failures
    FROM choreo_steps AS st
    WHERE st.service = s.service AND st.saga_id = s.saga_id
) AS t ON true";

/// Everything one call to `Store::commit` writes, in one statement (so one round trip, and
/// atomic on its own outside a transaction). Each table is touched at most once per row: the
/// changes are folded per saga before binding.
///
/// - `$1..$10` saga headers: created?, service, saga, deadline, status, abort reason,
///   initiated here, abort published, compensation acknowledged, abort event. Created ones
///   are inserted (an existing record is a primary key violation), the others updated.
/// - `$11..$19` steps added (or written again at their position): service, saga, position,
///   input, output, withheld, published, compensation, failure; `$39` when each was recorded.
/// - `$20..$24` compensation changes of steps stored earlier: service, saga, position,
///   compensation, failure.
/// - `$25..$27` inbox: service, event, deadline.
/// - `$28..$34` outbox, in recording order: service, event, kind, saga, reason, envelope,
///   recorded at.
/// - `$35` the version each header of `$1..$10` was changed from (ignored for created ones),
///   `$40` the version it is at once the call applied; `$36..$38` records changed or handled
///   without a header change: service, saga, version; `$41` the version they are at then.
///
/// A record changed from a version it no longer has (another instance committed meanwhile)
/// fails the whole statement as a serialization failure (`choreo_conflict`); so does
/// creating a record that exists (a primary key violation).
pub(crate) const COMMIT: &str = "
WITH headers AS (
    SELECT * FROM UNNEST(
        $1::bool[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::text[],
        $7::bool[], $8::bool[], $9::bool[], $10::text[], $35::int8[], $40::int8[]
    ) AS h (created, service, saga_id, deadline_ns, status, abort_reason,
            initiated_here, abort_published, compensation_acknowledged, abort_event, version,
            next)
),
created AS (
    INSERT INTO choreo_sagas (service, saga_id, deadline_ns, status, abort_reason,
        initiated_here, abort_published, compensation_acknowledged, abort_event, version)
    SELECT service, saga_id, deadline_ns, status, abort_reason,
        initiated_here, abort_published, compensation_acknowledged, abort_event, next
    FROM headers WHERE created
),
updated AS (
    UPDATE choreo_sagas AS s SET
        deadline_ns = h.deadline_ns, status = h.status, abort_reason = h.abort_reason,
        initiated_here = h.initiated_here, abort_published = h.abort_published,
        compensation_acknowledged = h.compensation_acknowledged, abort_event = h.abort_event,
        version = h.next
    FROM headers AS h
    WHERE NOT h.created AND s.service = h.service AND s.saga_id = h.saga_id
        AND s.version = h.version
    RETURNING 1
),
touched AS (
    UPDATE choreo_sagas AS s SET version = t.next
    FROM UNNEST($36::text[], $37::uuid[], $38::int8[], $41::int8[])
        AS t (service, saga_id, version, next)
    WHERE s.service = t.service AND s.saga_id = t.saga_id AND s.version = t.version
    RETURNING 1
),
steps AS (
    INSERT INTO choreo_steps (service, saga_id, position, input_id, output, withheld,
        published, compensation, compensation_failure, recorded_ns)
    SELECT * FROM UNNEST(
        $11::text[], $12::uuid[], $13::int4[], $14::uuid[], $15::text[],
        $16::bool[], $17::bool[], $18::text[], $19::text[], $39::int8[]
    )
    ON CONFLICT (service, saga_id, position) DO UPDATE SET
        input_id = EXCLUDED.input_id, output = EXCLUDED.output, withheld = EXCLUDED.withheld,
        published = EXCLUDED.published, compensation = EXCLUDED.compensation,
        compensation_failure = EXCLUDED.compensation_failure, recorded_ns = EXCLUDED.recorded_ns
),
compensations AS (
    UPDATE choreo_steps AS st SET
        compensation = c.compensation, compensation_failure = c.failure
    FROM UNNEST($20::text[], $21::uuid[], $22::int4[], $23::text[], $24::text[])
        AS c (service, saga_id, position, compensation, failure)
    WHERE st.service = c.service AND st.saga_id = c.saga_id AND st.position = c.position
),
inbox AS (
    INSERT INTO choreo_inbox (service, event_id, deadline_ns)
    SELECT * FROM UNNEST($25::text[], $26::uuid[], $27::int8[])
    ON CONFLICT DO NOTHING
),
outbox AS (
    INSERT INTO choreo_outbox (service, event_id, kind, saga_id, reason, envelope, recorded_ns)
    SELECT o.service, o.event_id, o.kind, o.saga_id, o.reason, o.envelope, o.recorded_ns
    FROM UNNEST($28::text[], $29::uuid[], $30::text[], $31::uuid[], $32::text[], $33::text[],
            $34::int8[])
        WITH ORDINALITY AS o (service, event_id, kind, saga_id, reason, envelope, recorded_ns, n)
    ORDER BY o.n
    ON CONFLICT DO NOTHING
)
SELECT CASE
    WHEN (SELECT count(*) FROM updated) + (SELECT count(*) FROM touched)
        < (SELECT count(*) FROM headers WHERE NOT created) + cardinality($37::uuid[])
    THEN choreo_conflict('a saga''s record changed since it was loaded')
END";

/// Marks step outputs published and deletes sent outbox entries. `$1` service; `$2..$3`
/// steps: saga, position; `$4..$6` outbox: saga, event, kind.
pub(crate) const MARK_SENT: &str = "
WITH steps AS (
    UPDATE choreo_steps AS st SET published = true
    FROM UNNEST($2::uuid[], $3::int4[]) AS m (saga_id, position)
    WHERE st.service = $1 AND st.saga_id = m.saga_id AND st.position = m.position
        AND NOT st.published
),
outbox AS (
    DELETE FROM choreo_outbox AS o
    USING UNNEST($4::uuid[], $5::uuid[], $6::text[]) AS m (saga_id, event_id, kind)
    WHERE o.service = $1 AND o.event_id = m.event_id AND o.kind = m.kind
        AND o.saga_id = m.saga_id
)
SELECT 1";

/// Claims, for one service, overdue deadlines, unsent step outputs and unsent outbox
/// entries no live claim holds, skipping rows another transaction holds. `$1` service, `$2`
/// deadlines before, `$3` recorded before, `$4` claimed until, `$5` now, `$6` the most of
/// each. One row per claim: `what` says which columns are set.
pub(crate) const CLAIM: &str = "
WITH sagas AS (
    UPDATE choreo_sagas AS s SET claimed_until_ns = $4
    WHERE (s.service, s.saga_id) IN (
        SELECT service, saga_id FROM choreo_sagas
        WHERE service = $1 AND status = 'active' AND NOT abort_published AND deadline_ns < $2
            AND (claimed_until_ns IS NULL OR claimed_until_ns < $5)
        ORDER BY deadline_ns
        LIMIT $6
        FOR UPDATE SKIP LOCKED
    )
    RETURNING s.saga_id, s.deadline_ns, s.initiated_here
),
steps AS (
    UPDATE choreo_steps AS st SET claimed_until_ns = $4
    WHERE (st.service, st.saga_id, st.position) IN (
        SELECT service, saga_id, position FROM choreo_steps
        WHERE service = $1 AND NOT published AND NOT withheld
            AND COALESCE(recorded_ns, 0) < $3
            AND (claimed_until_ns IS NULL OR claimed_until_ns < $5)
        ORDER BY recorded_ns NULLS FIRST
        LIMIT $6
        FOR UPDATE SKIP LOCKED
    )
    RETURNING st.position, st.output
),
outbox AS (
    UPDATE choreo_outbox AS o SET claimed_until_ns = $4
    WHERE (o.service, o.event_id, o.kind) IN (
        SELECT service, event_id, kind FROM choreo_outbox
        WHERE service = $1 AND COALESCE(recorded_ns, 0) < $3
            AND (claimed_until_ns IS NULL OR claimed_until_ns < $5)
        ORDER BY seq
        LIMIT $6
        FOR UPDATE SKIP LOCKED
    )
    RETURNING o.kind, o.reason, o.envelope
)
SELECT 'saga' AS what, saga_id, deadline_ns, initiated_here,
    NULL::int4 AS position, NULL::text AS kind, NULL::text AS reason, NULL::text AS event
FROM sagas
UNION ALL
SELECT 'step', NULL, NULL, NULL, position, NULL, NULL, output FROM steps
UNION ALL
SELECT 'outbox', NULL, NULL, NULL, NULL, kind, reason, envelope FROM outbox";

/// Active sagas whose abort this service has not published: their timers. `$1` service.
pub(crate) const RECOVER_TIMERS: &str = "
SELECT saga_id, deadline_ns, initiated_here FROM choreo_sagas
WHERE service = $1 AND status = 'active' AND NOT abort_published
ORDER BY deadline_ns, saga_id";

/// Aborted sagas whose compensation this service has not acknowledged. `$1` service.
pub(crate) const RECOVER_UNFINISHED: &str = "
SELECT saga_id FROM choreo_sagas
WHERE service = $1 AND status = 'aborted' AND NOT compensation_acknowledged
ORDER BY saga_id";

/// Step outputs neither published nor withheld, oldest first per saga. `$1` service.
pub(crate) const RECOVER_STEPS: &str = "
SELECT position, output FROM choreo_steps
WHERE service = $1 AND NOT published AND NOT withheld
ORDER BY saga_id, position";

/// Outbox entries, in recording order. `$1` service.
pub(crate) const RECOVER_OUTBOX: &str = "
SELECT kind, reason, envelope FROM choreo_outbox
WHERE service = $1
ORDER BY seq";

/// Deletes finished sagas (their steps cascade) and inbox ids whose deadline is before the
/// cutoff, and counts them. `$1` service, `$2` cutoff in nanoseconds.
pub(crate) const PURGE: &str = "
WITH sagas AS (
    DELETE FROM choreo_sagas
    WHERE service = $1 AND deadline_ns < $2
        AND (status = 'completed' OR (status = 'aborted' AND compensation_acknowledged))
    RETURNING 1
),
inbox AS (
    DELETE FROM choreo_inbox
    WHERE service = $1 AND deadline_ns < $2
    RETURNING 1
)
SELECT (SELECT count(*) FROM sagas) AS sagas, (SELECT count(*) FROM inbox) AS handled";

-- 016_event_log: the durable log behind the API's live stream `/events` (docs/events.md).
--
-- event_log        one row per change of a watched table: a monotonic id (a sequence), the
--                  table, the operation, the row's key as text, the new row as JSON (NULL for a
--                  delete) and when it was written. Each database has its own log: it is not a
--                  synced table (cesar.sync.tables.SYNCED_TABLES does not name it), and rows
--                  the sync applies here fire the capture like any other write.
-- event_log_state  the highest id ever pruned: a client resuming from an id at or below it is
--                  told to reload (`reset`), since events after its id may be gone.
--
-- The capture is one AFTER ROW trigger per watched table. It fires for every writer: the API,
-- an operator's plain SQL, and the sync applying rows from the other database (no WHEN
-- clause on cesar.sync_apply, unlike the sync's own capture).
--
-- Ids are taken from the sequence when the row is written, not when it commits, so a reader
-- can see id N+1 committed while N is still in flight. The reader (cesar/events/log.py) never
-- moves past a missing id until the transactions that could hold it have ended (PostgreSQL:
-- the in-progress xids of the snapshot that saw the gap; CockroachDB: a time window). That
-- argument needs ids handed out in order across sessions: the sequence is CACHE 1 (the default
-- on both engines; a per-session cache would break it).
--
-- pg_notify: on PostgreSQL the trigger wakes the API's listener (channel cesar_events, empty
-- payload, so one notification per transaction: PostgreSQL folds identical ones). CockroachDB
-- has no pg_notify (cockroachdb/cockroach#41522) and would refuse a function calling an
-- unknown one, so this file also defines public.pg_notify(TEXT, TEXT) as a no-op. On
-- PostgreSQL that stand-in is never called: pg_catalog is searched first, and its pg_notify
-- has the same signature. On CockroachDB the API polls the log instead.
--
-- Runs on PostgreSQL 13+ and (written for, not run here) CockroachDB v24.3+ (row-level
-- triggers, see 011); idempotent.

CREATE SEQUENCE IF NOT EXISTS event_log_id_seq CACHE 1;

CREATE TABLE IF NOT EXISTS event_log (
    id           BIGINT      PRIMARY KEY DEFAULT nextval('event_log_id_seq'),
    table_name   TEXT        NOT NULL,
    op           TEXT        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    pk           TEXT        NOT NULL,
    row_image    JSONB,
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Pruning by age.
CREATE INDEX IF NOT EXISTS event_log_occurred_at_idx ON event_log (occurred_at);

CREATE TABLE IF NOT EXISTS event_log_state (
    singleton       BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through  BIGINT      NOT NULL DEFAULT 0,
    pruned_at       TIMESTAMPTZ
);

INSERT INTO event_log_state (singleton, pruned_through) VALUES (true, 0)
ON CONFLICT (singleton) DO NOTHING;

DROP TRIGGER IF EXISTS event_capture ON agents;

DROP TRIGGER IF EXISTS event_capture ON tasks;

DROP TRIGGER IF EXISTS event_capture ON task_assignments;

DROP TRIGGER IF EXISTS event_capture ON agent_runs;

DROP TRIGGER IF EXISTS event_capture ON agent_run_events;

DROP TRIGGER IF EXISTS event_capture ON sync_state;

DROP TRIGGER IF EXISTS event_capture ON sync_conflicts;

CREATE OR REPLACE FUNCTION public.pg_notify(channel TEXT, payload TEXT) RETURNS VOID AS $$
BEGIN
    RETURN;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION event_capture() RETURNS TRIGGER AS $$
DECLARE
    image  JSONB;
    keyed  JSONB;
    key    TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        keyed := to_jsonb(OLD);
        image := NULL;
    ELSE
        keyed := to_jsonb(NEW);
        image := keyed;
    END IF;
    -- sync_state is keyed by (table_name, direction); every other watched table by id.
    IF TG_TABLE_NAME = 'sync_state' THEN
        key := (keyed ->> 'table_name') || '/' || (keyed ->> 'direction');
    ELSE
        key := keyed ->> 'id';
    END IF;
    -- A conflict's row images may be of any synced table (api_keys among them): the stream
    -- carries the conflict's facts; GET /conflicts shows the images to whoever may read them.
    IF TG_TABLE_NAME = 'sync_conflicts' AND image IS NOT NULL THEN
        image := image - 'incoming_row' - 'existing_row';
    END IF;
    INSERT INTO event_log (table_name, op, pk, row_image)
    VALUES (TG_TABLE_NAME, lower(TG_OP), key, image);
    PERFORM pg_notify('cesar_events', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON task_assignments
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agent_runs
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agent_run_events
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON sync_state
    FOR EACH ROW EXECUTE FUNCTION event_capture();

CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON sync_conflicts
    FOR EACH ROW EXECUTE FUNCTION event_capture();

-- cesar:postgresql-only
--
-- 018_event_capture_statement: on PostgreSQL, the event log's capture (016) of the synced
-- tables writes a whole statement's events in one INSERT ... SELECT instead of one PL/pgSQL call
-- and one INSERT per row.
--
-- 016's row trigger fires for every row written, by any writer, the sync included: a bulk
-- insert of a million agents paid a million trigger calls for the event log besides the sync's
-- own capture (measured: more than half of the sync's bulk write of a chunk on the target, and
-- a large part of what the "capture" cost an application's bulk insert; docs/performance.md).
-- Here the watched synced tables get AFTER ... FOR EACH STATEMENT triggers with transition
-- tables (PostgreSQL 10+); one per event, as PostgreSQL allows transition tables on one event
-- per trigger:
--   event_capture         INSERT  one 'insert' event per new row, its image;
--   event_capture_update  UPDATE  one 'update' event per new row, its image;
--   event_capture_delete  DELETE  one 'delete' event per old row, no image.
-- Row for row what 016 recorded: the same table, operation, key (the row's id as text) and
-- image (to_jsonb of the row); ids from the same sequence, taken in the statement's row order,
-- before the transaction commits, so the reader's gap rule (cesar/events/log.py) holds as
-- before. One pg_notify per statement (PostgreSQL folds a transaction's identical ones anyway).
-- What differs: events of one statement get their ids when the statement ends, not row by row;
-- and in an INSERT ... ON CONFLICT DO UPDATE the inserted rows' events come before the updated
-- rows' (each key still appears once per statement, in order per key). sync_state and
-- sync_conflicts keep 016's row trigger (a few rows per run).
--
-- CockroachDB has row-level triggers only (no FOR EACH STATEMENT, no transition tables): this
-- file is recorded there as applied without running anything, and 016's row trigger stays.
-- Idempotent: the triggers are dropped first (CREATE TRIGGER has no IF NOT EXISTS).

CREATE OR REPLACE FUNCTION event_capture_statement() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO event_log (table_name, op, pk, row_image)
        SELECT TG_TABLE_NAME, 'delete', o.id::TEXT, NULL FROM event_old_rows AS o;
    ELSE
        INSERT INTO event_log (table_name, op, pk, row_image)
        SELECT TG_TABLE_NAME, lower(TG_OP), n.id::TEXT, to_jsonb(n) FROM event_new_rows AS n;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('cesar_events', '');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS event_capture ON agents;
DROP TRIGGER IF EXISTS event_capture_update ON agents;
DROP TRIGGER IF EXISTS event_capture_delete ON agents;
CREATE TRIGGER event_capture AFTER INSERT ON agents
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_update AFTER UPDATE ON agents
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_delete AFTER DELETE ON agents
    REFERENCING OLD TABLE AS event_old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();

DROP TRIGGER IF EXISTS event_capture ON tasks;
DROP TRIGGER IF EXISTS event_capture_update ON tasks;
DROP TRIGGER IF EXISTS event_capture_delete ON tasks;
CREATE TRIGGER event_capture AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_update AFTER UPDATE ON tasks
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS event_old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();

DROP TRIGGER IF EXISTS event_capture ON task_assignments;
DROP TRIGGER IF EXISTS event_capture_update ON task_assignments;
DROP TRIGGER IF EXISTS event_capture_delete ON task_assignments;
CREATE TRIGGER event_capture AFTER INSERT ON task_assignments
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_update AFTER UPDATE ON task_assignments
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_delete AFTER DELETE ON task_assignments
    REFERENCING OLD TABLE AS event_old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();

DROP TRIGGER IF EXISTS event_capture ON agent_runs;
DROP TRIGGER IF EXISTS event_capture_update ON agent_runs;
DROP TRIGGER IF EXISTS event_capture_delete ON agent_runs;
CREATE TRIGGER event_capture AFTER INSERT ON agent_runs
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_update AFTER UPDATE ON agent_runs
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_delete AFTER DELETE ON agent_runs
    REFERENCING OLD TABLE AS event_old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();

DROP TRIGGER IF EXISTS event_capture ON agent_run_events;
DROP TRIGGER IF EXISTS event_capture_update ON agent_run_events;
DROP TRIGGER IF EXISTS event_capture_delete ON agent_run_events;
CREATE TRIGGER event_capture AFTER INSERT ON agent_run_events
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_update AFTER UPDATE ON agent_run_events
    REFERENCING NEW TABLE AS event_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();
CREATE TRIGGER event_capture_delete AFTER DELETE ON agent_run_events
    REFERENCING OLD TABLE AS event_old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION event_capture_statement();

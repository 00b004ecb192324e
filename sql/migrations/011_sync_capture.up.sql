-- 011_sync_capture: capture every INSERT, UPDATE and DELETE on the synced tables (docs/sync.md).
--
-- One AFTER ROW trigger per synced table upserts the row's sync_versions entry: a version set by
-- the database (strictly increasing per row, after any version this database has seen), this
-- database's origin, the tombstone flag for deletes, and pending = true. The sync's own writes
-- set cesar.sync_apply = 'on' for their transaction and are not captured (no echo).
--
-- Runs on PostgreSQL and on CockroachDB v24.3+ (row-level triggers, PL/pgSQL). The differences
-- this file avoids: CockroachDB needs (NEW).col rather than NEW.col (both accept the former),
-- counts TG_ARGV from 1 (not used) and has no statement-level triggers (none needed). Before
-- v26.2 it cannot CREATE OR REPLACE a function that a trigger uses (cockroachdb/cockroach#134575;
-- allowed from cockroachdb/cockroach#163348), so the triggers are dropped first: the file runs
-- again on a database that has them (a re-run after a lost tracking row, a restore), on both
-- engines. CREATE TRIGGER has no IF NOT EXISTS on either engine: hence DROP TRIGGER IF EXISTS.
--
-- A new synced table: add it to cesar.sync.tables.SYNCED_TABLES and, in its own migration,
--   CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON <table> FOR EACH ROW
--   WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
--   EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON agents;

DROP TRIGGER IF EXISTS sync_capture ON agent_capabilities;

DROP TRIGGER IF EXISTS sync_capture ON tasks;

DROP TRIGGER IF EXISTS sync_capture ON task_assignments;

DROP TRIGGER IF EXISTS sync_capture ON agent_runs;

DROP TRIGGER IF EXISTS sync_capture ON agent_run_events;

DROP TRIGGER IF EXISTS sync_capture ON api_keys;

DROP TRIGGER IF EXISTS sync_capture ON audit_log;

CREATE OR REPLACE FUNCTION sync_capture() RETURNS TRIGGER AS $$
DECLARE
    new_key  TEXT;
    old_key  TEXT;
    node     TEXT;
BEGIN
    SELECT origin INTO node FROM sync_node WHERE singleton;
    IF TG_OP <> 'INSERT' THEN
        old_key := (OLD).id::TEXT;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_key := (NEW).id::TEXT;
    END IF;
    -- A delete, or an update that changed the primary key: a tombstone for the old key.
    IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN
        INSERT INTO sync_versions AS v (table_name, pk, version, origin, deleted, pending)
        VALUES (TG_TABLE_NAME, old_key, clock_timestamp(), node, true, true)
        ON CONFLICT (table_name, pk) DO UPDATE
            SET version = greatest(clock_timestamp(), v.version + INTERVAL '1 microsecond'),
                origin = excluded.origin, deleted = true, pending = true;
    END IF;
    IF new_key IS NOT NULL THEN
        INSERT INTO sync_versions AS v (table_name, pk, version, origin, deleted, pending)
        VALUES (TG_TABLE_NAME, new_key, clock_timestamp(), node, false, true)
        ON CONFLICT (table_name, pk) DO UPDATE
            SET version = greatest(clock_timestamp(), v.version + INTERVAL '1 microsecond'),
                origin = excluded.origin, deleted = false, pending = true;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agents FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_capabilities FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON tasks FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON task_assignments FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_runs FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_run_events FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON api_keys FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON audit_log FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

-- 011_sync_capture, rolled back: writes are no longer captured (sync_versions stays, see 010).
-- Triggers first: CockroachDB cannot drop a function that a trigger uses.

DROP TRIGGER IF EXISTS sync_capture ON agents;

DROP TRIGGER IF EXISTS sync_capture ON agent_capabilities;

DROP TRIGGER IF EXISTS sync_capture ON tasks;

DROP TRIGGER IF EXISTS sync_capture ON task_assignments;

DROP TRIGGER IF EXISTS sync_capture ON agent_runs;

DROP TRIGGER IF EXISTS sync_capture ON agent_run_events;

DROP TRIGGER IF EXISTS sync_capture ON api_keys;

DROP TRIGGER IF EXISTS sync_capture ON audit_log;

DROP FUNCTION IF EXISTS sync_capture();

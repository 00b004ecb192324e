-- 016_event_log, rolled back: the stream's log and its capture go; the watched tables stay.

DROP TRIGGER IF EXISTS event_capture ON agents;

DROP TRIGGER IF EXISTS event_capture ON tasks;

DROP TRIGGER IF EXISTS event_capture ON task_assignments;

DROP TRIGGER IF EXISTS event_capture ON agent_runs;

DROP TRIGGER IF EXISTS event_capture ON agent_run_events;

DROP TRIGGER IF EXISTS event_capture ON sync_state;

DROP TRIGGER IF EXISTS event_capture ON sync_conflicts;

DROP FUNCTION IF EXISTS event_capture();

DROP FUNCTION IF EXISTS public.pg_notify(TEXT, TEXT);

DROP TABLE IF EXISTS event_log_state;

DROP TABLE IF EXISTS event_log;

DROP SEQUENCE IF EXISTS event_log_id_seq;

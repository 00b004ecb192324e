-- cesar:postgresql-only
--
-- 018_event_capture_statement, undone: 016's row-level event capture on the synced tables.

DROP TRIGGER IF EXISTS event_capture ON agents;
DROP TRIGGER IF EXISTS event_capture_update ON agents;
DROP TRIGGER IF EXISTS event_capture_delete ON agents;
CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION event_capture();

DROP TRIGGER IF EXISTS event_capture ON tasks;
DROP TRIGGER IF EXISTS event_capture_update ON tasks;
DROP TRIGGER IF EXISTS event_capture_delete ON tasks;
CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION event_capture();

DROP TRIGGER IF EXISTS event_capture ON task_assignments;
DROP TRIGGER IF EXISTS event_capture_update ON task_assignments;
DROP TRIGGER IF EXISTS event_capture_delete ON task_assignments;
CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON task_assignments
    FOR EACH ROW EXECUTE FUNCTION event_capture();

DROP TRIGGER IF EXISTS event_capture ON agent_runs;
DROP TRIGGER IF EXISTS event_capture_update ON agent_runs;
DROP TRIGGER IF EXISTS event_capture_delete ON agent_runs;
CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agent_runs
    FOR EACH ROW EXECUTE FUNCTION event_capture();

DROP TRIGGER IF EXISTS event_capture ON agent_run_events;
DROP TRIGGER IF EXISTS event_capture_update ON agent_run_events;
DROP TRIGGER IF EXISTS event_capture_delete ON agent_run_events;
CREATE TRIGGER event_capture AFTER INSERT OR UPDATE OR DELETE ON agent_run_events
    FOR EACH ROW EXECUTE FUNCTION event_capture();

DROP FUNCTION IF EXISTS event_capture_statement();

-- cesar:postgresql-only
--
-- 017_sync_capture_statement, down: back to 011's row-level capture trigger on every synced
-- table (the function sync_capture() of 011 is still there).

DROP TRIGGER IF EXISTS sync_capture ON agents;
DROP TRIGGER IF EXISTS sync_capture_update ON agents;
DROP TRIGGER IF EXISTS sync_capture_delete ON agents;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agents FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON agent_capabilities;
DROP TRIGGER IF EXISTS sync_capture_update ON agent_capabilities;
DROP TRIGGER IF EXISTS sync_capture_delete ON agent_capabilities;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_capabilities FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON tasks;
DROP TRIGGER IF EXISTS sync_capture_update ON tasks;
DROP TRIGGER IF EXISTS sync_capture_delete ON tasks;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON tasks FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON task_assignments;
DROP TRIGGER IF EXISTS sync_capture_update ON task_assignments;
DROP TRIGGER IF EXISTS sync_capture_delete ON task_assignments;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON task_assignments FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON agent_runs;
DROP TRIGGER IF EXISTS sync_capture_update ON agent_runs;
DROP TRIGGER IF EXISTS sync_capture_delete ON agent_runs;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_runs FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON agent_run_events;
DROP TRIGGER IF EXISTS sync_capture_update ON agent_run_events;
DROP TRIGGER IF EXISTS sync_capture_delete ON agent_run_events;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON agent_run_events FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON api_keys;
DROP TRIGGER IF EXISTS sync_capture_update ON api_keys;
DROP TRIGGER IF EXISTS sync_capture_delete ON api_keys;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON api_keys FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP TRIGGER IF EXISTS sync_capture ON audit_log;
DROP TRIGGER IF EXISTS sync_capture_update ON audit_log;
DROP TRIGGER IF EXISTS sync_capture_delete ON audit_log;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE ON audit_log FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION sync_capture();

DROP FUNCTION IF EXISTS sync_capture_statement();

-- 009_agent_workload_view (down): removes the dashboard view (no data is lost).
DROP VIEW IF EXISTS agent_workload;

-- 005_agent_runs (down): removes the run history.
DROP TABLE IF EXISTS agent_runs;

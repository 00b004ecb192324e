-- 006_agent_run_events (down): removes the event stream of every run.
DROP TABLE IF EXISTS agent_run_events;

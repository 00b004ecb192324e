-- 001_agents (down): removes the agents table and its rows.
DROP TABLE IF EXISTS agents;

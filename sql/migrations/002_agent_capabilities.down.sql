-- 002_agent_capabilities (down): removes the capabilities of every agent.
DROP TABLE IF EXISTS agent_capabilities;

-- 002_agent_capabilities: what each agent can do, and how it is configured for it.
--
-- Synced table. One row per (agent, capability). That pair is NOT declared UNIQUE: the local
-- database and the cluster could each insert it while apart, and the sync would then fail on
-- the second copy. Instead the API derives the row's id from the pair (UUID v5 of
-- "<agent_id>:<capability>" in the namespace a9e5c0de-0000-4000-8000-000000000000), so both
-- sides write the *same* row and a conflict resolves by the later captured version (the
-- sync's, docs/sync.md).
-- Runs unchanged on PostgreSQL and CockroachDB.

CREATE TABLE IF NOT EXISTS agent_capabilities (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id    UUID        NOT NULL REFERENCES agents (id),
    capability  TEXT        NOT NULL,
    enabled     BOOLEAN     NOT NULL DEFAULT true,
    config      JSONB       NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS agent_capabilities_agent_idx
    ON agent_capabilities (agent_id, capability);

CREATE INDEX IF NOT EXISTS agent_capabilities_updated_at_idx
    ON agent_capabilities (updated_at);

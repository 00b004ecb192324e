-- 004_task_assignments: which agent works on which task, in which role.
--
-- Synced table. No UNIQUE (task_id, agent_id): the two sides may assign the same agent to
-- the same task while apart. Both rows are kept (the history stays true) and the API reads
-- the latest unreleased one; an edit of one row on both sides resolves by the later
-- updated_at. Runs unchanged on PostgreSQL and CockroachDB.

CREATE TABLE IF NOT EXISTS task_assignments (
    id           UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id      UUID        NOT NULL REFERENCES tasks (id),
    agent_id     UUID        NOT NULL REFERENCES agents (id),
    role         TEXT        NOT NULL DEFAULT 'owner'
                             CHECK (role IN ('owner', 'helper', 'reviewer')),
    assigned_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS task_assignments_task_idx ON task_assignments (task_id);

-- An agent's current workload.
CREATE INDEX IF NOT EXISTS task_assignments_open_idx ON task_assignments (agent_id)
    WHERE released_at IS NULL;

CREATE INDEX IF NOT EXISTS task_assignments_updated_at_idx ON task_assignments (updated_at);

-- 015_task_workflow, rolled back. Triggers first: CockroachDB cannot drop a function that a
-- trigger uses.

DROP TRIGGER IF EXISTS run_status_guard ON agent_runs;

DROP TRIGGER IF EXISTS task_status_guard ON tasks;

DROP FUNCTION IF EXISTS run_status_guard();

DROP FUNCTION IF EXISTS task_status_guard();

DROP INDEX IF EXISTS agent_runs_started_idx;

DROP INDEX IF EXISTS tasks_created_idx;

ALTER TABLE tasks DROP COLUMN IF EXISTS preferred_agent_id;

ALTER TABLE tasks DROP COLUMN IF EXISTS idempotency_key;

ALTER TABLE tasks DROP COLUMN IF EXISTS request_hash;

-- 015_task_workflow: what the API's work routes need (docs/api.md, tasks, runs and dispatch).
--
-- tasks.request_hash       SHA-256 of a create request made with an Idempotency-Key: a retry
--                          with the same body replays the task, a different body is refused.
--                          The task's id itself is a UUID v5 of (API key id, Idempotency-Key),
--                          so the local database and the cluster write the same row for the
--                          same retried request and the sync merges them into one task.
-- tasks.idempotency_key    the client's key, kept for the operator reading the row.
-- tasks.preferred_agent_id the agent the creator asked for; dispatch takes it when it is active.
--                          No foreign key: the sync may apply a task before its agent.
-- task_status_guard()      the task state machine, enforced here and nowhere else:
--                            queued   -> assigned, cancelled
--                            assigned -> running, queued, cancelled
--                            running  -> done, failed, cancelled
--                            done, failed, cancelled: final
--                          Any other change of status is refused with SQLSTATE 55000, the
--                          message naming the transition and DETAIL 'current_status=<old>'
--                          (the API answers 409 with it). Other columns may change freely.
-- run_status_guard()       an agent run goes running -> succeeded | failed | cancelled once;
--                          a finished run is immutable (status, counters, cost, error, times).
--
-- The two-way sync applies the other side's rows with cesar.sync_apply = 'on': the guards let
-- those through (the later version wins, as for every synced row; docs/sync.md), like the
-- capture trigger of 011 does. A plain SQL UPDATE by an operator is guarded like the API.
--
-- Synced tables (tasks): the new columns are nullable, no UNIQUE; the sync copies them (it reads
-- the columns from the catalog). Runs on PostgreSQL and on CockroachDB v24.3+ (row-level BEFORE
-- triggers with WHEN, PL/pgSQL, RAISE ... USING ERRCODE/DETAIL: see docs/cockroachdb.md); the
-- functions use (NEW).col / (OLD).col, which both engines accept. As in 011, the triggers are
-- dropped before their functions are replaced (CockroachDB before v26.2 refuses to replace a
-- function a trigger uses), so the file runs again where it ran before.

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS request_hash TEXT;

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS idempotency_key TEXT;

ALTER TABLE tasks ADD COLUMN IF NOT EXISTS preferred_agent_id UUID;

-- GET /tasks and GET /runs: newest first, keyset on (created_at, id) / (started_at, id).
CREATE INDEX IF NOT EXISTS tasks_created_idx ON tasks (created_at, id);

CREATE INDEX IF NOT EXISTS agent_runs_started_idx ON agent_runs (started_at, id);

DROP TRIGGER IF EXISTS task_status_guard ON tasks;

DROP TRIGGER IF EXISTS run_status_guard ON agent_runs;

CREATE OR REPLACE FUNCTION task_status_guard() RETURNS TRIGGER AS $$
DECLARE
    old_status TEXT;
    new_status TEXT;
BEGIN
    old_status := (OLD).status;
    new_status := (NEW).status;
    IF new_status = old_status
       OR (old_status = 'queued' AND new_status IN ('assigned', 'cancelled'))
       OR (old_status = 'assigned' AND new_status IN ('running', 'queued', 'cancelled'))
       OR (old_status = 'running' AND new_status IN ('done', 'failed', 'cancelled')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'illegal status transition of task %: % -> %', (OLD).id, old_status,
        new_status USING ERRCODE = '55000', DETAIL = 'current_status=' || old_status;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION run_status_guard() RETURNS TRIGGER AS $$
DECLARE
    old_status TEXT;
    new_status TEXT;
BEGIN
    old_status := (OLD).status;
    new_status := (NEW).status;
    IF old_status = 'running' THEN
        IF new_status IN ('running', 'succeeded', 'failed', 'cancelled') THEN
            RETURN NEW;
        END IF;
    ELSIF new_status = old_status
          AND (NEW).finished_at IS NOT DISTINCT FROM (OLD).finished_at
          AND (NEW).tokens_in = (OLD).tokens_in
          AND (NEW).tokens_out = (OLD).tokens_out
          AND (NEW).cost_usd = (OLD).cost_usd
          AND (NEW).error IS NOT DISTINCT FROM (OLD).error THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'illegal status transition of agent run %: % -> % (a finished run is final)',
        (OLD).id, old_status, new_status
        USING ERRCODE = '55000', DETAIL = 'current_status=' || old_status;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER task_status_guard BEFORE UPDATE ON tasks FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION task_status_guard();

CREATE TRIGGER run_status_guard BEFORE UPDATE ON agent_runs FOR EACH ROW
    WHEN (current_setting('cesar.sync_apply', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION run_status_guard();

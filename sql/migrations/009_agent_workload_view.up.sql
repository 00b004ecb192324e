-- 009_agent_workload_view: per agent, its open assignments and its runs of the last 24 hours,
-- for the API's dashboard and the monitoring. A view: not synced, each side computes it.
--
-- Plain CASE sums rather than aggregate FILTER clauses, and no LATERAL: the simplest form that
-- PostgreSQL and CockroachDB both plan well. CREATE OR REPLACE VIEW runs on both.

CREATE OR REPLACE VIEW agent_workload AS
SELECT
    a.id,
    a.name,
    a.mob_alias,
    a.status,
    COALESCE(w.open_assignments, 0) AS open_assignments,
    COALESCE(r.runs_24h, 0)         AS runs_24h,
    COALESCE(r.failed_runs_24h, 0)  AS failed_runs_24h,
    COALESCE(r.cost_usd_24h, 0)     AS cost_usd_24h
FROM agents AS a
LEFT JOIN (
    SELECT agent_id, count(*) AS open_assignments
    FROM task_assignments
    WHERE released_at IS NULL
    GROUP BY agent_id
) AS w ON w.agent_id = a.id
LEFT JOIN (
    SELECT agent_id,
           count(*)                                            AS runs_24h,
           sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)  AS failed_runs_24h,
           sum(cost_usd)                                       AS cost_usd_24h
    FROM agent_runs
    WHERE started_at > now() - INTERVAL '24 hours'
    GROUP BY agent_id
) AS r ON r.agent_id = a.id;

-- 012_sync_safety: the sync lease's fencing token, and where each run records divergence
-- (see cesar/lease.py and docs/sync.md).
--
-- sync_lease.generation  grows on every take of the lease; every write of a sync run checks,
--                        in its own transaction, that the row still holds its holder and
--                        generation. Both databases of a pair have it: the run that takes the
--                        lease in the cluster copies its token to the local side, whose writes
--                        are fenced the same way.
-- sync_divergence        per table: how many rows the two sides differ by, as last found by a
--                        run (method 'count': both sides' row counts with nothing pending, on
--                        every run; 'full': the reconcile's key-by-key comparison), shown by
--                        `cesar sync status`, /health and /metrics.
--
-- Runs unchanged on PostgreSQL and CockroachDB; idempotent.

ALTER TABLE sync_lease ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS sync_divergence (
    table_name      TEXT        PRIMARY KEY,
    divergent_rows  BIGINT      NOT NULL,
    method          TEXT        NOT NULL CHECK (method IN ('count', 'full')),
    local_rows      BIGINT,
    cluster_rows    BIGINT,
    checked_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

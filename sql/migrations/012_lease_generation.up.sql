-- 012_lease_generation: the sync lease's fencing token (see cesar/lease.py, docs/sync.md).
--
-- generation grows on every take of the lease; every write of a sync run checks, in its own
-- transaction, that the row still holds its holder and generation. Both databases of a pair
-- have the column: the run that takes the lease in the cluster copies its token to the local
-- side, whose writes are fenced the same way.
--
-- Runs unchanged on PostgreSQL and CockroachDB; idempotent.

ALTER TABLE sync_lease ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0;

-- 019_sync_orphan_checks: where each side remembers its last search for version rows whose row
-- is gone, so that a run repeats that search (a read of every version row of the table) only
-- when it can find something new (see cesar/sync/divergence.py and docs/sync.md).
--
-- sync_orphan_checks  per synced table, on each database of a pair: when the search last ran
--                     to its end on this database (this database's clock), what it found, and
--                     the table's fingerprint read just before it (PostgreSQL: the table's and
--                     sync_versions' file nodes, the table's delete counter and the statistics'
--                     reset time; NULL where none is read). Written only after a search has
--                     finished: a run killed during one leaves the previous record.
--
-- Runs unchanged on PostgreSQL and CockroachDB; idempotent.

CREATE TABLE IF NOT EXISTS sync_orphan_checks (
    table_name   TEXT        PRIMARY KEY,
    checked_at   TIMESTAMPTZ NOT NULL,
    orphans      BIGINT      NOT NULL,
    fingerprint  TEXT
);

-- 010_sync_tables: what the two-way sync keeps in each database (see docs/sync.md).
--
-- sync_node      this database's identity: the origin stamped on its writes, and its peer
-- sync_versions  one row per synced row: its version, origin, tombstone flag and whether the
--                peer still has to receive it (the change log is the set of pending rows)
-- sync_state     per table and direction: the last run, rows moved, conflicts, lag
-- sync_conflicts every version that lost (both row images), and rows that could not be applied
-- sync_lease     one sync run at a time (no advisory locks on CockroachDB)
--
-- Runs unchanged on PostgreSQL and CockroachDB; every statement is idempotent.

CREATE TABLE IF NOT EXISTS sync_node (
    singleton   BOOLEAN     PRIMARY KEY DEFAULT true CHECK (singleton),
    origin      TEXT        NOT NULL,
    role        TEXT        CHECK (role IN ('local', 'cluster')),
    peer        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    paired_at   TIMESTAMPTZ
);

-- A random origin per database: the tie-break of equal versions, never equal on two databases.
INSERT INTO sync_node (singleton, origin)
VALUES (true, substr(replace(gen_random_uuid()::TEXT, '-', ''), 1, 16))
ON CONFLICT (singleton) DO NOTHING;

CREATE TABLE IF NOT EXISTS sync_versions (
    table_name  TEXT        NOT NULL,
    pk          TEXT        NOT NULL,
    version     TIMESTAMPTZ NOT NULL,
    origin      TEXT        NOT NULL,
    deleted     BOOLEAN     NOT NULL DEFAULT false,
    pending     BOOLEAN     NOT NULL DEFAULT true,
    PRIMARY KEY (table_name, pk)
);

-- What a run reads: only the pending rows, so its cost is the number of changes.
CREATE INDEX IF NOT EXISTS sync_versions_pending_idx
    ON sync_versions (table_name, deleted, pk) WHERE pending;

CREATE TABLE IF NOT EXISTS sync_state (
    table_name          TEXT        NOT NULL,
    direction           TEXT        NOT NULL
                                    CHECK (direction IN ('local_to_cluster', 'cluster_to_local')),
    last_run_at         TIMESTAMPTZ,
    last_sync_at        TIMESTAMPTZ,
    position            TIMESTAMPTZ,
    rows_last_run       BIGINT      NOT NULL DEFAULT 0,
    rows_total          BIGINT      NOT NULL DEFAULT 0,
    conflicts_last_run  BIGINT      NOT NULL DEFAULT 0,
    conflicts_total     BIGINT      NOT NULL DEFAULT 0,
    pending             BIGINT      NOT NULL DEFAULT 0,
    oldest_pending_at   TIMESTAMPTZ,
    last_error          TEXT,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, direction)
);

-- Lag: the age of the oldest change not yet moved, or the time since the last successful run
-- when none is pending (the seed's Grafana query, made honest).
CREATE OR REPLACE VIEW sync_lag AS
SELECT
    table_name,
    direction,
    last_sync_at,
    pending,
    EXTRACT(EPOCH FROM (now() - CASE
        WHEN last_sync_at IS NULL THEN oldest_pending_at
        WHEN oldest_pending_at IS NOT NULL AND oldest_pending_at < last_sync_at
            THEN oldest_pending_at
        ELSE last_sync_at
    END)) AS lag_seconds
FROM sync_state;

CREATE TABLE IF NOT EXISTS sync_conflicts (
    id                 TEXT        PRIMARY KEY,
    table_name         TEXT        NOT NULL,
    pk                 TEXT        NOT NULL,
    direction          TEXT        NOT NULL,
    resolution         TEXT        NOT NULL
                                   CHECK (resolution IN ('incoming_won', 'existing_won',
                                                         'failed', 'repaired')),
    incoming_version   TIMESTAMPTZ,
    incoming_origin    TEXT,
    incoming_row       JSONB,
    existing_version   TIMESTAMPTZ,
    existing_origin    TEXT,
    existing_row       JSONB,
    reason             TEXT,
    sqlstate           TEXT,
    attempts           INT         NOT NULL DEFAULT 1,
    detected_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS sync_conflicts_table_idx
    ON sync_conflicts (table_name, detected_at);

CREATE TABLE IF NOT EXISTS sync_lease (
    id           INT         PRIMARY KEY CHECK (id = 1),
    holder       TEXT        NOT NULL,
    host         TEXT        NOT NULL,
    pid          INT         NOT NULL,
    acquired_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);

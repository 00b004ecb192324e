-- 010_sync_tables, rolled back: the sync's bookkeeping goes; the synced tables stay as they are.
-- Roll back 011_sync_capture first (its triggers write sync_versions).

DROP TABLE IF EXISTS sync_lease;
DROP TABLE IF EXISTS sync_conflicts;
DROP VIEW IF EXISTS sync_lag;
DROP TABLE IF EXISTS sync_state;
DROP TABLE IF EXISTS sync_versions;
DROP TABLE IF EXISTS sync_node;

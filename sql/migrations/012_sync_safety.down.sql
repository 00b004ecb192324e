-- 012_sync_safety, rolled back.

DROP TABLE IF EXISTS sync_divergence;

ALTER TABLE sync_lease DROP COLUMN IF EXISTS generation;

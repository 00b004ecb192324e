ALTER TABLE sync_lease DROP COLUMN IF EXISTS generation;

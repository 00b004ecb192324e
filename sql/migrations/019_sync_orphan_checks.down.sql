-- 019_sync_orphan_checks, rolled back: every run searches for orphaned version rows again.

DROP TABLE IF EXISTS sync_orphan_checks;

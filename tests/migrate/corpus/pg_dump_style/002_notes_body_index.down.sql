-- cesar:no-transaction
DROP INDEX CONCURRENTLY IF EXISTS shop.notes_body_idx;

-- cesar:no-transaction
-- Built without blocking writes to shop.notes, then the table's statistics refreshed:
-- neither can run inside a transaction block.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notes_body_idx ON shop.notes (body);
VACUUM (ANALYZE) shop.notes;

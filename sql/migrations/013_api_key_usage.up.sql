-- 013_api_key_usage: when each API key was last used, as seen by the API of this database.
--
-- Not synced, on purpose: a last-use write is frequent and belongs to one side. Were it an
-- update of api_keys, the sync would treat it as an edit, and a last use recorded after a
-- revocation made on the other side would carry the unrevoked row back over the revocation.
-- The API writes here in batches (never once per request); `cesar keys list` shows the later of
-- this and api_keys.last_used_at. No foreign key: usage outlives nothing, and the key's row may
-- arrive or leave through the sync. Runs unchanged on PostgreSQL and CockroachDB.

CREATE TABLE IF NOT EXISTS api_key_usage (
    key_id        UUID        PRIMARY KEY,
    last_used_at  TIMESTAMPTZ NOT NULL
);

-- 007_api_keys: the keys clients present to the CESAR API. Only a SHA-256 of each key is
-- stored; the key itself is shown once, when it is created.
--
-- Synced table (a key created on one side must work on the other). key_hash is NOT declared
-- UNIQUE: keys are 256-bit random values, so two sides cannot produce the same hash, and a
-- UNIQUE index would only add a way for the sync to fail. A key edited on both sides resolves
-- by the later captured version (docs/sync.md): a revocation made after the other side's edit
-- wins.
-- TEXT[] is STRING[] on CockroachDB: same semantics.

CREATE TABLE IF NOT EXISTS api_keys (
    id            UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    name          TEXT        NOT NULL,
    key_prefix    TEXT        NOT NULL,
    key_hash      TEXT        NOT NULL CHECK (length(key_hash) = 64),
    scopes        TEXT[]      NOT NULL DEFAULT ARRAY['agents:read']::TEXT[],
    created_by    TEXT        NOT NULL,
    expires_at    TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Authentication looks a key up by the hash of what the client sent.
CREATE INDEX IF NOT EXISTS api_keys_hash_idx ON api_keys (key_hash);

CREATE INDEX IF NOT EXISTS api_keys_updated_at_idx ON api_keys (updated_at);

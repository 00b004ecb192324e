-- 001_agents: the CESAR agents and their mob aliases.
--
-- Synced table (local <-> cluster): UUID primary key, no UNIQUE constraint that the two sides
-- could violate independently. Agent names are unique by convention only; the seed rows below
-- carry fixed UUIDs and fixed timestamps so that both sides seed the *same* 24 rows, byte for
-- byte, and the sync's first reconcile finds nothing to repair. A conflicting edit of one agent
-- resolves by the sync's captured version (docs/sync.md), never by comparing updated_at.
-- Runs unchanged on PostgreSQL (13+) and CockroachDB (gen_random_uuid() exists on both).
--
-- Every statement is idempotent (IF NOT EXISTS, ON CONFLICT DO NOTHING): in per-statement mode
-- a statement interrupted by a crash runs again on resume, and a database whose agents table
-- predates the runner (the first `invoke up`) is adopted as it is.
--
-- updated_at is written by the application on every UPDATE: PostgreSQL would use a trigger and
-- CockroachDB `ON UPDATE now()`, and neither runs on the other, so the API sets it explicitly.

CREATE TABLE IF NOT EXISTS agents (
    id          UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    name        TEXT        NOT NULL,
    mob_alias   TEXT        NOT NULL,
    role        TEXT        NOT NULL,
    status      TEXT        NOT NULL DEFAULT 'active'
                            CHECK (status IN ('active', 'paused', 'retired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO agents (id, name, mob_alias, role, created_at, updated_at)
SELECT v.id::UUID, v.name, v.mob_alias, v.role,
       TIMESTAMPTZ '2025-11-21 00:00:00+00', TIMESTAMPTZ '2025-11-21 00:00:00+00'
FROM (VALUES
    ('a9e5c0de-0001-4000-8000-000000000001', 'CESAR',     'The Don',          'orchestrator'),
    ('a9e5c0de-0002-4000-8000-000000000002', 'Atlas',     'The Architect',    'infrastructure'),
    ('a9e5c0de-0003-4000-8000-000000000003', 'Vega',      'Lucky Vega',       'market-analysis'),
    ('a9e5c0de-0004-4000-8000-000000000004', 'Orion',     'The Hunter',       'lead-generation'),
    ('a9e5c0de-0005-4000-8000-000000000005', 'Lyra',      'Silk Lyra',        'negotiation'),
    ('a9e5c0de-0006-4000-8000-000000000006', 'Sentinel',  'The Doorman',      'security'),
    ('a9e5c0de-0007-4000-8000-000000000007', 'Ledger',    'The Accountant',   'finance'),
    ('a9e5c0de-0008-4000-8000-000000000008', 'Echo',      'The Whisper',      'communications'),
    ('a9e5c0de-0009-4000-8000-000000000009', 'Quill',     'Fast Eddie Quill', 'content'),
    ('a9e5c0de-000a-4000-8000-00000000000a', 'Nova',      'Nicky Nova',       'research'),
    ('a9e5c0de-000b-4000-8000-00000000000b', 'Forge',     'The Blacksmith',   'code-generation'),
    ('a9e5c0de-000c-4000-8000-00000000000c', 'Relay',     'The Courier',      'integrations'),
    ('a9e5c0de-000d-4000-8000-00000000000d', 'Cipher',    'Johnny Cipher',    'encryption'),
    ('a9e5c0de-000e-4000-8000-00000000000e', 'Pulse',     'The Heartbeat',    'monitoring'),
    ('a9e5c0de-000f-4000-8000-00000000000f', 'Scout',     'Little Scout',     'web-research'),
    ('a9e5c0de-0010-4000-8000-000000000010', 'Mercury',   'Quicksilver',      'scheduling'),
    ('a9e5c0de-0011-4000-8000-000000000011', 'Juno',      'The Matron',       'customer-success'),
    ('a9e5c0de-0012-4000-8000-000000000012', 'Titan',     'Big Tony Titan',   'data-engineering'),
    ('a9e5c0de-0013-4000-8000-000000000013', 'Iris',      'The Eye',          'vision'),
    ('a9e5c0de-0014-4000-8000-000000000014', 'Hermes',    'The Messenger',    'notifications'),
    ('a9e5c0de-0015-4000-8000-000000000015', 'Sage',      'The Consigliere',  'advisory'),
    ('a9e5c0de-0016-4000-8000-000000000016', 'Bolt',      'Sparky',           'automation'),
    ('a9e5c0de-0017-4000-8000-000000000017', 'Argus',     'Hundred Eyes',     'audit'),
    ('a9e5c0de-0018-4000-8000-000000000018', 'Onyx',      'The Cleaner',      'data-quality')
) AS v (id, name, mob_alias, role)
ON CONFLICT (id) DO NOTHING;

-- The sync reads what changed since its last run.
CREATE INDEX IF NOT EXISTS agents_updated_at_idx ON agents (updated_at);

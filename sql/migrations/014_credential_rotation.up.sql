-- 014_credential_rotation: which of the two application logins is active, recorded in the
-- database the application uses, so that password rotation never infers it from an operator's
-- file (docs/rotation.md). One row per rotated credential ('app': cesar_app_a / cesar_app_b).
--
-- generation counts completed switches: an operator file naming the login that is no longer
-- active is stale and is refused before anything changes.
-- Not a synced table: each database records the credential it serves.
-- Runs unchanged on PostgreSQL and CockroachDB.

CREATE TABLE IF NOT EXISTS credential_rotation (
    name          TEXT        PRIMARY KEY,
    active_login  TEXT        NOT NULL,
    generation    BIGINT      NOT NULL DEFAULT 0,
    rotation_id   TEXT,
    switched_by   TEXT        NOT NULL,
    switched_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The rotation lock (cesar.lease): one row while a rotation runs, keyed by the credential's name.
CREATE TABLE IF NOT EXISTS rotation_lease (
    id           TEXT        PRIMARY KEY,
    holder       TEXT        NOT NULL,
    host         TEXT        NOT NULL,
    pid          INT         NOT NULL,
    operator     TEXT,
    acquired_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    generation   BIGINT      NOT NULL DEFAULT 0
);

-- Readable by every role: it holds no secret, and the rotation's admin (a CREATEROLE role on
-- PostgreSQL, with no other privilege) reads it to tell a stale operator file from a live one.
GRANT SELECT ON credential_rotation TO PUBLIC;

-- 014_credential_rotation down: rotation then has no record of the active login and refuses
-- to run until the table is back.

DROP TABLE IF EXISTS rotation_lease;
DROP TABLE IF EXISTS credential_rotation;

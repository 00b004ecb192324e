-- A prepared statement (PREPARE name AS), used and released within the migration.
SET search_path TO shop;
PREPARE add_note (integer, text) AS INSERT INTO notes (id, body) VALUES ($1, $2);
EXECUTE add_note(1, 'first; with a semicolon');
EXECUTE add_note(2, E'second\'s');
CALL log_note(2);

DELETE FROM shop.notes_log;
DELETE FROM shop.notes;

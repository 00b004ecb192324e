RESTORE DATABASE cesar FROM LATEST IN 'external://cesar_backups'
  AS OF SYSTEM TIME '2026-11-30 10:15:30.250000+00:00'
  WITH new_db_name = 'cesar_drill';
SELECT 'cesar' AS db, 'agents' AS tbl, count(*) AS rows, md5(string_agg(t::STRING, '' ORDER BY t::STRING)) AS hash FROM cesar.public.agents AS t AS OF SYSTEM TIME '2026-11-30 10:15:30.250000+00:00';
SELECT 'cesar_drill' AS db, 'agents' AS tbl, count(*) AS rows, md5(string_agg(t::STRING, '' ORDER BY t::STRING)) AS hash FROM cesar_drill.public.agents AS t;
SELECT 'cesar' AS db, 'tasks' AS tbl, count(*) AS rows, md5(string_agg(t::STRING, '' ORDER BY t::STRING)) AS hash FROM cesar.public.tasks AS t AS OF SYSTEM TIME '2026-11-30 10:15:30.250000+00:00';
SELECT 'cesar_drill' AS db, 'tasks' AS tbl, count(*) AS rows, md5(string_agg(t::STRING, '' ORDER BY t::STRING)) AS hash FROM cesar_drill.public.tasks AS t;
DROP DATABASE IF EXISTS cesar_drill CASCADE;

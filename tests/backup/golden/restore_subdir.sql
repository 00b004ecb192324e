RESTORE DATABASE cesar FROM '/2026/11/29-100000.00' IN 'external://cesar_backups'
  AS OF SYSTEM TIME '2026-11-30 10:15:30.250000+00:00'
  WITH new_db_name = 'cesar_restored';

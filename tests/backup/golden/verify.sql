RESTORE DATABASE cesar FROM LATEST IN 'external://cesar_backups'
  WITH schema_only, verify_backup_table_data, new_db_name = 'cesar_verify';
DROP DATABASE IF EXISTS cesar_verify CASCADE;

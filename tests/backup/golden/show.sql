SHOW BACKUPS IN 'external://cesar_backups';
SHOW BACKUP FROM LATEST IN 'external://cesar_backups' WITH check_files;

CREATE EXTERNAL CONNECTION IF NOT EXISTS cesar_backups AS 's3://cesar-backups/dev?AWS_ENDPOINT=http%3A%2F%2Fbackup-store%3A9000&AWS_ACCESS_KEY_ID=KEY&AWS_SECRET_ACCESS_KEY=SECRET&AWS_REGION=us-east-1';
CREATE SCHEDULE IF NOT EXISTS cesar_backup
  FOR BACKUP DATABASE cesar INTO 'external://cesar_backups'
  WITH revision_history = true, detached
  RECURRING '*/15 * * * *'
  FULL BACKUP '@daily'
  WITH SCHEDULE OPTIONS first_run = 'now', on_execution_failure = 'retry', on_previous_running = 'skip';

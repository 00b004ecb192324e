CREATE SCHEDULE IF NOT EXISTS operator_bucket
  FOR BACKUP DATABASE cesar INTO 'external://operator_backups'
  WITH revision_history = true, detached
  RECURRING '@hourly'
  FULL BACKUP '@weekly'
  WITH SCHEDULE OPTIONS first_run = 'now', on_execution_failure = 'retry', on_previous_running = 'skip';

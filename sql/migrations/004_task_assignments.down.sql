-- 004_task_assignments (down): removes every assignment (the tasks and agents stay).
DROP TABLE IF EXISTS task_assignments;

-- 003_tasks (down): removes the tasks table and every task in it.
DROP TABLE IF EXISTS tasks;

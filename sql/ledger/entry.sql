-- A task's ledger entry, for `tasks show`.
SELECT kind, completed_at FROM task_ledger WHERE task_id = $1

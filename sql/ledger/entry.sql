-- A task's ledger entry, for `tasks show`.
SELECT kind, completed_at, deleted_by FROM task_ledger WHERE task_id = $1

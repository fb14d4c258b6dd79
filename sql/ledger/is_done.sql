SELECT EXISTS (SELECT 1 FROM task_ledger WHERE task_id = $1) AS "done!"

INSERT INTO task_ledger (task_id, kind) VALUES ($1, $2)
ON CONFLICT (task_id) DO NOTHING

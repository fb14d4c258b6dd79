-- Records task $1 as deleted by $2: the worker acknowledges it without
-- running it, whoever delivers it again. A task already completed keeps its row.
INSERT INTO task_ledger (task_id, kind, deleted_by) VALUES ($1, 'deleted', $2)
ON CONFLICT (task_id) DO NOTHING

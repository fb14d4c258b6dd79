-- The verification row of a task: created by its first attempt, the same
-- row for every later one (the update only makes RETURNING give it back).
INSERT INTO verify_emails (task_id, username, email)
VALUES ($1, $2, $3)
ON CONFLICT (task_id) DO UPDATE SET task_id = EXCLUDED.task_id
RETURNING id, email

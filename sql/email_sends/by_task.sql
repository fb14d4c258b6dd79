-- Every send attempt of a task, oldest first (for `tasks show`).
SELECT attempt, delivery, message_id, started_at, handed_over_at, outcome, detail, finished_at
FROM email_sends
WHERE task_id = $1
ORDER BY id

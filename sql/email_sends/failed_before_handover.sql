-- An attempt that ended before the server had the message.
INSERT INTO email_sends (task_id, attempt, delivery, message_id, started_at, outcome, detail, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, now())

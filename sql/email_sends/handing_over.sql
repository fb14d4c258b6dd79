-- An attempt is about to send its message's final dot.
INSERT INTO email_sends (task_id, attempt, delivery, message_id, started_at, handed_over_at)
VALUES ($1, $2, $3, $4, $5, now())
RETURNING id

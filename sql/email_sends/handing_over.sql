-- An attempt is about to write its message and the final dot (the server
-- answered DATA with 354).
INSERT INTO email_sends (task_id, attempt, delivery, message_id, started_at, handed_over_at)
VALUES ($1, $2, $3, $4, $5, now())
RETURNING id

-- The task's latest attempt that handed its message over, and what it knew.
SELECT id, handed_over_at AS "handed_over_at!", outcome,
    -- On the database's clock, as handed_over_at was written.
    extract(epoch FROM now() - handed_over_at)::float8 AS "age_secs!"
FROM email_sends
WHERE task_id = $1 AND handed_over_at IS NOT NULL
ORDER BY id DESC
LIMIT 1

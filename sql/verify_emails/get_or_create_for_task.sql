-- The verification row of a task, about to be sent: created by the first
-- attempt; a later attempt of the same task gets the same row with the hash
-- of its own new code, valid for $5 seconds from this send (a row already
-- used keeps its state).
INSERT INTO verify_emails (task_id, username, email, code_hash, expired_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8))
ON CONFLICT (task_id) DO UPDATE
SET code_hash = CASE
        WHEN verify_emails.is_used THEN verify_emails.code_hash
        ELSE EXCLUDED.code_hash
    END,
    expired_at = CASE
        WHEN verify_emails.is_used THEN verify_emails.expired_at
        ELSE EXCLUDED.expired_at
    END
RETURNING id, email

-- The first attempt of a task creates the row; a later attempt of the same
-- task gets the same row back, so a repeated email carries the same link,
-- valid again for $5 seconds from this send (unless it was used already).
INSERT INTO verify_emails (task_id, username, email, secret_code, expired_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5::float8))
ON CONFLICT (task_id) DO UPDATE
SET expired_at = CASE
    WHEN verify_emails.is_used THEN verify_emails.expired_at
    ELSE EXCLUDED.expired_at
END
RETURNING id, email, secret_code

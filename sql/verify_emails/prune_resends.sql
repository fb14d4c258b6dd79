-- Forgets up to 100 mailboxes whose window ($2 seconds) and interval ($1
-- seconds) are over: they limit nothing (the next request starts afresh),
-- and every address ever asked for would stay otherwise.
DELETE FROM verify_email_resend_limits
WHERE mailbox IN (
    SELECT mailbox FROM verify_email_resend_limits
    WHERE window_started_at < now() - make_interval(secs => $2::float8)
      AND last_accepted_at < now() - make_interval(secs => $1::float8)
    LIMIT 100
    -- Rows another request is pruning are left to it: no waiting.
    FOR UPDATE SKIP LOCKED
)

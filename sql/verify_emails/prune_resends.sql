-- Forgets up to 100 requests older than $1 seconds: past the interval they
-- limit nothing, and every address ever asked for would stay otherwise.
DELETE FROM verify_email_resends
WHERE email IN (
    SELECT email FROM verify_email_resends
    WHERE requested_at < now() - make_interval(secs => $1::float8)
    LIMIT 100
    -- Rows another request is pruning are left to it: no waiting.
    FOR UPDATE SKIP LOCKED
)

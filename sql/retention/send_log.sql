-- Forgets up to $2 send attempts begun more than $1 seconds ago.
DELETE FROM email_sends
WHERE id IN (
    SELECT id FROM email_sends
    WHERE started_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)

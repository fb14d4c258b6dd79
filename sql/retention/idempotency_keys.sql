-- Forgets up to $2 idempotency keys older than $1 seconds.
DELETE FROM idempotency_keys
WHERE (endpoint, key) IN (
    SELECT endpoint, key FROM idempotency_keys
    WHERE created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)

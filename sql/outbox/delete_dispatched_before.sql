-- Deletes up to $2 rows dispatched more than $1 seconds ago. Small batches keep
-- each delete's locks and WAL short.
DELETE FROM outbox
WHERE id IN (
    SELECT id FROM outbox
    WHERE dispatched_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
)

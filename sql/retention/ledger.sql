-- Forgets up to $2 completed tasks older than $1 seconds.
DELETE FROM task_ledger
WHERE task_id IN (
    SELECT task_id FROM task_ledger
    WHERE completed_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)

-- Queue $1's newest checkpoint taken at least $2 seconds ago (0: the newest).
SELECT position FROM outbox_checkpoints
WHERE queue = $1 AND taken_at <= now() - make_interval(secs => $2::float8)
ORDER BY taken_at DESC
LIMIT 1

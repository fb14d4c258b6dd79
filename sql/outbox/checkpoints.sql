-- Every queue's newest checkpoint.
SELECT DISTINCT ON (queue) queue, position
FROM outbox_checkpoints
ORDER BY queue, taken_at DESC

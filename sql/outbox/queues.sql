-- The queues outbox rows are for, one index descent per queue (a loose scan
-- of outbox_by_queue) rather than a read of every row.
WITH RECURSIVE q AS (
    (SELECT queue FROM outbox ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT o.queue FROM outbox o WHERE o.queue > q.queue ORDER BY o.queue LIMIT 1)
    FROM q
    WHERE q.queue IS NOT NULL
)
SELECT queue AS "queue!" FROM q WHERE queue IS NOT NULL

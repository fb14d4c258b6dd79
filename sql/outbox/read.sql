-- One batch of queue $1's rows beyond its position, in transaction order:
-- the rows of the position's open transactions ($3), the rest of its partial
-- transactions ($4, each after its id in $5), and everything from $2 on.
-- The statement's snapshot sees only committed rows, and it is returned
-- (once, beside each row), for the next position (src/outbox/position.rs).
-- Each part is a range of outbox_by_queue bounded by the batch size $6 (one
-- range per open or partial transaction: `txid = ANY(...)` is not an
-- ordered range, and read as a filter it walks the queue's whole index),
-- and the ranges on txid prune the older partitions: the cost is the batch,
-- however many rows wait or other queues hold. The relay reads in a
-- transaction that allows index scans only (src/outbox/session.rs).
SELECT b.id AS "id!", b.txid::text AS "txid!", b.kind AS "kind!", b.queue AS "queue!",
       b.payload::text AS "payload!", b.max_retry AS "max_retry!", b.timeout_ms AS "timeout_ms!",
       b.process_at AS "process_at!", b.request_id, b.created_at AS "created_at!", b.trace_context,
       s.snapshot AS "snapshot!"
FROM (SELECT pg_current_snapshot()::text AS snapshot) AS s, (
    (SELECT o.* FROM unnest($3::text[]::xid8[]) AS p(txid)
     CROSS JOIN LATERAL (SELECT * FROM outbox WHERE queue = $1 AND txid = p.txid
                         ORDER BY id LIMIT $6) AS o
     ORDER BY o.txid, o.id LIMIT $6)
    UNION ALL
    (SELECT o.* FROM unnest($4::text[]::xid8[], $5::int8[]) AS p(txid, after)
     CROSS JOIN LATERAL (SELECT * FROM outbox WHERE queue = $1 AND txid = p.txid AND id > p.after
                         ORDER BY id LIMIT $6) AS o
     ORDER BY o.txid, o.id LIMIT $6)
    UNION ALL
    (SELECT * FROM outbox WHERE queue = $1 AND txid >= $2::text::xid8
     ORDER BY txid, id LIMIT $6)
) AS b
ORDER BY b.txid, b.id
LIMIT $6

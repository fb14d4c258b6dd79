-- One outbox row, for `tasks show`.
SELECT txid::text AS "txid!", kind, queue, payload::text AS "payload!", max_retry, timeout_ms,
       process_at, created_at, request_id
FROM outbox
WHERE id = $1

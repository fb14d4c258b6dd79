-- One outbox row, for `tasks show`.
SELECT id, kind, queue, payload::text AS "payload!", max_retry, timeout_ms, process_at,
       created_at, dispatched_at, request_id
FROM outbox
WHERE id = $1

-- Keyset pages over the rows dispatched in the last $1 seconds (redelivery).
SELECT id, kind, queue, payload::text AS "payload!", max_retry, timeout_ms, process_at,
       request_id, created_at, trace_context
FROM outbox
WHERE dispatched_at >= now() - make_interval(secs => $1::float8) AND id > $2
ORDER BY id
LIMIT $3

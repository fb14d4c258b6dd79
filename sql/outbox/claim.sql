-- Rows another relay holds are skipped, not waited for; ids commit out of
-- order, so every undispatched row is a candidate, not just those above a mark.
-- Rows of the queues in $2 (held back after failing) are left for later.
SELECT id, kind, queue, payload::text AS "payload!", max_retry, timeout_ms, process_at,
       request_id, created_at, trace_context
FROM outbox
WHERE dispatched_at IS NULL AND queue <> ALL($2::text[])
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED

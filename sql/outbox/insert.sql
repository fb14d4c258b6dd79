INSERT INTO outbox (kind, queue, payload, max_retry, timeout_ms, process_at, request_id,
                    trace_context)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::float8 / 1000), $7, $8)
RETURNING id

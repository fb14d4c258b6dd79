UPDATE outbox SET dispatched_at = now() WHERE id = ANY($1)

-- Records the key with the request it answered; a row past its time is
-- taken over (the retention loop had not deleted it yet).
INSERT INTO idempotency_keys (endpoint, key, request_hash, username, response)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (endpoint, key) DO UPDATE
SET request_hash = EXCLUDED.request_hash, username = EXCLUDED.username,
    response = EXCLUDED.response, created_at = now()

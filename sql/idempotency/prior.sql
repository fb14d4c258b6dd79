-- The request a key already answered within $3 seconds, and the account it
-- created (gone if the account expired since).
SELECT k.request_hash, k.response, u.hashed_password AS "hashed_password?",
    k.username IS NOT NULL AS "made_account!"
FROM idempotency_keys k
LEFT JOIN users u ON u.username = k.username
WHERE k.endpoint = $1 AND k.key = $2
  AND k.created_at >= now() - make_interval(secs => $3::float8)

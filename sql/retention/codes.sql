-- Deletes up to $2 verification codes that expired more than $1 seconds ago.
DELETE FROM verify_email_codes
WHERE (verify_email_id, code_hash) IN (
    SELECT verify_email_id, code_hash FROM verify_email_codes
    WHERE expired_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)

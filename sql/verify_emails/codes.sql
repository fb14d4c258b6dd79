-- Every code sent for the row, and whether it still works.
SELECT code_hash, expired_at > now() AS "is_live!"
FROM verify_email_codes
WHERE verify_email_id = $1

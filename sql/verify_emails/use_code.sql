-- Marks the row used if it still may be; returns the username it verifies.
-- The code itself was compared before, in constant time, against code_hash.
UPDATE verify_emails
SET is_used = true
WHERE id = $1 AND NOT is_used AND expired_at > now()
RETURNING username

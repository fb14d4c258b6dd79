-- Marks the code used if it is valid now; returns the username it verified.
UPDATE verify_emails
SET is_used = true
WHERE id = $1 AND secret_code = $2 AND NOT is_used AND expired_at > now()
RETURNING username

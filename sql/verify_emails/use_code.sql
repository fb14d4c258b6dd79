-- Marks the row used; returns the username it verifies. The code was
-- compared before, in constant time, against the row's code hashes.
UPDATE verify_emails
SET is_used = true
WHERE id = $1 AND NOT is_used
RETURNING username

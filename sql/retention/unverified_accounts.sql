-- Deletes up to $2 accounts still unverified $1 seconds after sign-up; their
-- verification rows and codes go with them (ON DELETE CASCADE). Nothing here
-- waits: an account whose row, or one of whose verification rows, another
-- transaction holds (a link being used now) is left for the next pass. The
-- rows are locked in the order a verification locks them, so the two never
-- deadlock.
WITH old AS (
    SELECT username FROM users
    WHERE NOT is_email_verified
      AND created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), rows AS (
    SELECT v.id FROM verify_emails v
    WHERE v.username IN (SELECT username FROM old)
    FOR UPDATE SKIP LOCKED
)
DELETE FROM users u
WHERE u.username IN (SELECT username FROM old)
  AND NOT u.is_email_verified
  AND NOT EXISTS (
      SELECT 1 FROM verify_emails v
      WHERE v.username = u.username AND v.id NOT IN (SELECT id FROM rows)
  )

-- Deletes up to $2 accounts still unverified $1 seconds after sign-up; their
-- verification rows and codes go with them (ON DELETE CASCADE). A link used
-- at this moment either verifies first (the row no longer matches) or finds
-- the account gone.
DELETE FROM users
WHERE username IN (
    SELECT username FROM users
    WHERE NOT is_email_verified
      AND created_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
AND NOT is_email_verified

-- The user whose address is $1 (in any case), if it is not verified yet.
SELECT username FROM users
WHERE lower(email) = lower($1) AND NOT is_email_verified
ORDER BY email_case_duplicate, created_at
LIMIT 1

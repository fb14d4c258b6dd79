-- Whether a sign-up would collide, checked before the costly password hash
-- (the unique indexes still decide at insert).
SELECT
    EXISTS (SELECT 1 FROM users WHERE username = $1) AS "username!",
    EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($2)) AS "email!"

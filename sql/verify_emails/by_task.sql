-- The verify-email row a task made, with how many codes it issued (one per
-- send attempt; kept only as hashes) and when the last one expires, for
-- `tasks show`.
SELECT v.username, v.email, v.is_used, v.created_at,
       count(c.code_hash) AS "codes!", max(c.expired_at) AS last_expires_at
FROM verify_emails v
LEFT JOIN verify_email_codes c ON c.verify_email_id = v.id
WHERE v.task_id = $1
GROUP BY v.id

-- Deletes up to $2 verification rows older than $1 seconds that nothing needs:
-- used, or their user verified, and no code of theirs expired within $1
-- seconds. Rows of unverified users stay until their account expires.
DELETE FROM verify_emails
WHERE id IN (
    SELECT v.id FROM verify_emails v
    JOIN users u USING (username)
    WHERE v.created_at < now() - make_interval(secs => $1::float8)
      AND (v.is_used OR u.is_email_verified)
      AND NOT EXISTS (
          SELECT 1 FROM verify_email_codes c
          WHERE c.verify_email_id = v.id
            AND c.expired_at >= now() - make_interval(secs => $1::float8)
      )
    LIMIT $2
    FOR UPDATE OF v SKIP LOCKED
)

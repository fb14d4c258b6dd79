-- Records a request for a new link to address $1, unless one was recorded in
-- the last $2 seconds; returns a row when this request may go ahead.
INSERT INTO verify_email_resends (email, requested_at)
VALUES (lower($1), now())
ON CONFLICT (email) DO UPDATE
SET requested_at = now()
WHERE verify_email_resends.requested_at <= now() - make_interval(secs => $2::float8)
RETURNING requested_at

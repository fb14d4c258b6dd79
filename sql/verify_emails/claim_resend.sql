-- Counts a request for a new link to mailbox $1, when it may go ahead:
-- the first of a window, or, within the window, one of at most $3 accepted,
-- each at least $2 seconds times 2^(accepted so far - 1) after the last
-- (60 s, 2 min, 4 min, ...; never more than the window). A new window starts
-- once the last one is $4 seconds old, and not sooner than $2 seconds after
-- the last request; windows are fixed, so any $4 seconds see at most twice
-- $3. Returns a row when the request may go ahead.
INSERT INTO verify_email_resend_limits AS l
    (mailbox, window_started_at, accepted, last_accepted_at)
VALUES ($1, now(), 1, now())
ON CONFLICT (mailbox) DO UPDATE
SET window_started_at = CASE WHEN l.window_started_at <= now() - make_interval(secs => $4::float8)
                             THEN now() ELSE l.window_started_at END,
    accepted = CASE WHEN l.window_started_at <= now() - make_interval(secs => $4::float8)
                    THEN 1 ELSE l.accepted + 1 END,
    last_accepted_at = now()
WHERE (l.window_started_at <= now() - make_interval(secs => $4::float8)
       AND l.last_accepted_at <= now() - make_interval(secs => $2::float8))
   OR (l.accepted < $3::int
       AND l.last_accepted_at <= now() - make_interval(
               secs => least($2::float8 * power(2, least(l.accepted - 1, 40)), $4::float8)))
RETURNING accepted

-- How long until mailbox $1 may ask for a new link again, by the limits of
-- claim_resend.sql (the same $2, $3, $4): the next step of the growing
-- interval, or the start of a new window if that comes first or the window
-- accepted $3 already.
WITH l AS (
    SELECT accepted,
           last_accepted_at + make_interval(
               secs => least($2::float8 * power(2, least(accepted - 1, 40)), $4::float8)) AS next_step,
           greatest(window_started_at + make_interval(secs => $4::float8),
                    last_accepted_at + make_interval(secs => $2::float8)) AS next_window
    FROM verify_email_resend_limits
    WHERE mailbox = $1
)
SELECT greatest(0, extract(epoch FROM
           CASE WHEN accepted < $3::int THEN least(next_step, next_window) ELSE next_window END
           - now()))::float8 AS "wait_secs!"
FROM l

-- Requests for a new verification link, counted per mailbox (the key of
-- src/users/mailbox.rs: case, plus tags and Gmail's dots folded), whether or
-- not an account has the address: the limit must answer the same either way.
-- A window of VERIFY_EMAIL_RESEND_WINDOW starts with its first request and
-- accepts at most VERIFY_EMAIL_RESEND_MAX, each a growing interval after the
-- one before. Replaces verify_email_resends (one request per interval),
-- which is left for the processes of the previous version during a rolling
-- upgrade (they prune it themselves); a later migration drops it.

CREATE TABLE verify_email_resend_limits (
    mailbox           text        PRIMARY KEY,
    window_started_at timestamptz NOT NULL,
    -- Requests accepted in the window.
    accepted          integer     NOT NULL CHECK (accepted >= 1),
    last_accepted_at  timestamptz NOT NULL
);
-- Rows past their window and interval limit nothing: pruned by time.
CREATE INDEX verify_email_resend_limits_window ON verify_email_resend_limits (window_started_at);

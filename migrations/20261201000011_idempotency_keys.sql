-- Idempotency-Key on POST /v1/create_user and /v1/resend_verify_email: the
-- key of a request, written in its transaction, so a retry after a lost
-- reply gets the same answer.
CREATE TABLE idempotency_keys (
    endpoint     text        NOT NULL,
    key          text        NOT NULL,
    -- sha256 of the request's fields, the password left out (it is checked
    -- against the account's argon2 hash instead: a fast hash of it would be
    -- a shortcut to it).
    request_hash bytea       NOT NULL,
    -- The account a sign-up created (its password hash checks a retry's
    -- password), and the answer it got: the user as it was then. A resend
    -- creates no account (NULL), and its answer is always the same.
    username     text,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

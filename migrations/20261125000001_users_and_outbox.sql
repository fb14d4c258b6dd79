-- Users and the transactional outbox.
--
-- A sign-up inserts one row into each table in the same transaction, so a user
-- exists if and only if its outbox row exists. The relay forwards outbox rows to
-- Redis and stamps `dispatched_at`; the row id is the task id for the task's
-- whole life (Redis key, ledger, logs).

CREATE TABLE users (
    username            text        PRIMARY KEY,
    hashed_password     text        NOT NULL,
    full_name           text        NOT NULL,
    email               text        NOT NULL UNIQUE,
    is_email_verified   boolean     NOT NULL DEFAULT false,
    password_changed_at timestamptz NOT NULL DEFAULT '0001-01-01 00:00:00Z',
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    kind          text        NOT NULL,
    queue         text        NOT NULL,
    payload       jsonb       NOT NULL,
    max_retry     integer     NOT NULL CHECK (max_retry >= 0),
    timeout_ms    bigint      NOT NULL CHECK (timeout_ms > 0),
    process_at    timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);

-- The relay claims undispatched rows in id order; this partial index holds only
-- them, so a long dispatched history does not slow the claim down.
CREATE INDEX outbox_undispatched ON outbox (id) WHERE dispatched_at IS NULL;

-- Retention deletes and `--redeliver-since` walk dispatched rows by time.
CREATE INDEX outbox_dispatched_at ON outbox (dispatched_at) WHERE dispatched_at IS NOT NULL;

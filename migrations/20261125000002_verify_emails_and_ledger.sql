-- Email verification and the processed-task ledger.

CREATE TABLE verify_emails (
    id          bigserial   PRIMARY KEY,
    -- The task that created this row. A redelivered task finds and reuses it,
    -- so every email one task sends carries the same link.
    task_id     bigint      NOT NULL UNIQUE,
    username    text        NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    email       text        NOT NULL,
    secret_code text        NOT NULL,
    is_used     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_at  timestamptz NOT NULL DEFAULT (now() + interval '15 minutes')
);

-- One row per task whose run completed. A delivery of a task found here is
-- acknowledged without running its handler again.
CREATE TABLE task_ledger (
    task_id      bigint      PRIMARY KEY,
    kind         text        NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now()
);

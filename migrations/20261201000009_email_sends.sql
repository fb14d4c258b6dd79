-- One row per attempt to send a task's email, and what became of it: the
-- record `tasks show` prints, and the one that keeps a send whose outcome is
-- unknown (no reply to its final dot) from being repeated blindly.
CREATE TABLE email_sends (
    id             bigserial   PRIMARY KEY,
    task_id        bigint      NOT NULL,
    -- The task's attempt and the Redis delivery that ran it.
    attempt        integer     NOT NULL,
    delivery       bigint      NOT NULL,
    message_id     text        NOT NULL,
    started_at     timestamptz NOT NULL,
    -- Set, before the message's final dot is sent, once the server took
    -- everything but that dot: from here a lost reply leaves the outcome
    -- unknown. NULL for attempts that failed before.
    handed_over_at timestamptz,
    -- NULL while the attempt waits for its outcome, or when its worker died
    -- waiting (then the outcome is unknown).
    outcome        text        CHECK (outcome IN ('sent', 'refused', 'failed', 'sender_side', 'unknown')),
    detail         text,
    finished_at    timestamptz
);

CREATE INDEX email_sends_by_task ON email_sends (task_id, id);

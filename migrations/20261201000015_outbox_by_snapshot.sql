-- The outbox becomes insert-only: nothing on the relay's path updates or
-- deletes a row, so a held snapshot (a nightly pg_dump, a long report, an
-- idle transaction) leaves no dead tuples for the relay to walk again.
--
-- Each row carries the id of the transaction that wrote it (`txid`). The
-- relay finds what is new by comparing snapshots instead of reading a flag:
-- a queue's position is the set of transactions whose rows it forwarded (a
-- snapshot, see src/outbox/position.rs), kept in Redis with the queue's tasks
-- and checkpointed to `outbox_checkpoints`.
--
-- Rows live in partitions by ranges of `txid`. The relay reads the newest
-- ones (its reads prune the rest), creates the next partition ahead of use,
-- and drops a partition whole once every queue's checkpoint is past it and
-- its rows are older than OUTBOX_RETENTION. `outbox_overflow` (the default
-- partition) takes rows no range covers, should the next partition ever be
-- late.
--
-- The old table stays as `outbox_legacy` when it holds rows: the relay
-- forwards its undispatched rows with the old claim-and-mark, exactly once,
-- and drops the table once none waits and its rows are past retention. A
-- fresh database has no such rows, and the table goes at once. The id
-- sequence carries over, so row ids (task ids) never repeat across the two.

ALTER TABLE outbox RENAME TO outbox_legacy;
ALTER INDEX outbox_pkey RENAME TO outbox_legacy_pkey;
ALTER INDEX outbox_undispatched RENAME TO outbox_legacy_undispatched;
ALTER INDEX outbox_dispatched_at RENAME TO outbox_legacy_dispatched_at;

CREATE TABLE outbox (
    id            bigint      NOT NULL DEFAULT nextval('outbox_id_seq'),
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind          text        NOT NULL,
    queue         text        NOT NULL,
    payload       jsonb       NOT NULL,
    max_retry     integer     NOT NULL CHECK (max_retry >= 0),
    timeout_ms    bigint      NOT NULL CHECK (timeout_ms > 0),
    process_at    timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    request_id    text,
    trace_context text
) PARTITION BY RANGE (txid);

ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;

-- The relay's one index: a queue's rows in transaction order. Each batch
-- reads a range of it from the queue's position (plus the transactions that
-- were still open then), so a queue's cost is its batch, whatever other
-- queues hold.
CREATE INDEX outbox_by_queue ON outbox (queue, txid, id);
-- Ids and times follow the insert order: block ranges are enough for
-- `tasks show <id>` and for finding where a redelivery window starts, and
-- cost a writer next to nothing.
CREATE INDEX outbox_ids ON outbox USING brin (id);
CREATE INDEX outbox_created_at ON outbox USING brin (created_at);

CREATE TABLE outbox_overflow PARTITION OF outbox DEFAULT;

-- The first range: everything up to ten million transactions from now. The
-- relay creates the next one once this one is in use. A partition's name
-- holds its range: outbox_p<from>_<to> (0 for no lower bound).
DO $$
DECLARE
    upto bigint := pg_current_xact_id()::text::bigint + 10000000;
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO (%L)',
                   'outbox_p0_' || upto, upto);
END
$$;

-- A queue's position, now and then (the live one is in Redis): where a
-- relay starts when Redis lost it, how far back a redelivery goes, and what
-- retention may drop. Insert-only; rows past OUTBOX_RETENTION are deleted
-- with the partitions.
CREATE TABLE outbox_checkpoints (
    queue    text        NOT NULL,
    position text        NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_checkpoints_by_queue ON outbox_checkpoints (queue, taken_at);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox_legacy) THEN
        DROP TABLE outbox_legacy;
    END IF;
END
$$;

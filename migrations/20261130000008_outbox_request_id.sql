-- The id of the HTTP request that wrote an outbox row travels with its task,
-- so the worker's log lines for a sign-up carry the sign-up's request id.
-- Nullable: rows written before this migration, and by tools, have none.
ALTER TABLE outbox ADD COLUMN request_id text;

-- Rows dispatched and kept until the retention deletes them.
SELECT count(*) AS "dispatched!" FROM outbox WHERE dispatched_at IS NOT NULL

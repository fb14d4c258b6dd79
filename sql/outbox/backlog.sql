-- The undispatched rows: how many, and how long the oldest has waited (on
-- the database's clock, the one that stamped created_at). Both read the
-- partial index of undispatched rows only.
SELECT count(*) AS "undispatched!",
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds
FROM outbox
WHERE dispatched_at IS NULL

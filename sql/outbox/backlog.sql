-- The undispatched rows: how many (counted up to $1, so that a huge backlog
-- after an outage costs a bounded read), and how long the oldest has waited,
-- on the database's clock (the one that stamped created_at). The oldest is
-- the lowest id, found through the partial index of undispatched rows
-- alone: ids are taken at insert, so a row can be a few milliseconds older
-- than a lower id, no more than its transaction lasted.
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE dispatched_at IS NULL LIMIT $1) AS waiting)
         AS "undispatched!",
       (SELECT extract(epoch FROM now() - created_at)::float8
        FROM outbox WHERE dispatched_at IS NULL ORDER BY id LIMIT 1) AS oldest_age_seconds

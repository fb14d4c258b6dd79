-- Queue $1's rows beyond its position (as in read.sql): how many, counted up
-- to $6 so that a huge backlog after an outage costs a bounded read, and how
-- long the oldest has waited on the database's clock. The oldest is looked
-- for among the rows counted, which come in transaction order.
SELECT count(*) AS "waiting!",
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age_seconds
FROM (
    (SELECT o.created_at FROM unnest($3::text[]::xid8[]) AS p(txid)
     CROSS JOIN LATERAL (SELECT * FROM outbox WHERE queue = $1 AND txid = p.txid
                         ORDER BY id LIMIT $6) AS o
     ORDER BY o.txid, o.id LIMIT $6)
    UNION ALL
    (SELECT o.created_at FROM unnest($4::text[]::xid8[], $5::int8[]) AS p(txid, after)
     CROSS JOIN LATERAL (SELECT * FROM outbox WHERE queue = $1 AND txid = p.txid AND id > p.after
                         ORDER BY id LIMIT $6) AS o
     ORDER BY o.txid, o.id LIMIT $6)
    UNION ALL
    (SELECT created_at FROM outbox WHERE queue = $1 AND txid >= $2::text::xid8
     ORDER BY txid LIMIT $6)
) AS b

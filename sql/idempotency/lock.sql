-- Whether this transaction is the only one handling the key now (released at
-- its end). Taken, not waited for: a second request gets 409 at once.
SELECT pg_try_advisory_xact_lock(hashtextextended($1 || ' ' || $2, 0)) AS "locked!"

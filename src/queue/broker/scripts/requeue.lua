-- Hand a running task back (graceful shutdown): it goes to the front of the
-- pending list at once, and the interrupted run does not count as a retry.
-- KEYS[1] task key, KEYS[2] active, KEYS[3] pending
-- ARGV[1] id, ARGV[2] delivery, ARGV[3] wake channel
-- Returns 1, or 0 when this delivery no longer holds an active run (the lease
-- was lost, or the task was handed back already: pushing it twice would run
-- it twice).
local f = redis.call('HMGET', KEYS[1], 'deliveries', 'state')
if f[1] ~= ARGV[2] or f[2] ~= 'active' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
-- Its wait counts from when it first became pending: pending_since is kept.
redis.call('HSET', KEYS[1], 'state', 'pending')
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[3], 1)
return 1

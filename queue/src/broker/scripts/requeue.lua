-- Hand a running task back (graceful shutdown, or what it needs is down): it goes to the front of the
-- pending list at once, and the interrupted run does not count as a retry.
-- KEYS[1] task key, KEYS[2] active, KEYS[3] pending
-- ARGV[1] id, ARGV[2] delivery, ARGV[3] wake channel
-- Returns 1, or 0 when this delivery no longer holds an active run (the lease
-- was lost, or the task was handed back already: pushing it twice would run
-- it twice).
local f = redis.call('HMGET', KEYS[1], 'deliveries', 'state')
if f[1] ~= ARGV[2] or f[2] ~= 'active' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
-- It keeps its pending_since: at the front, it is the task the queue's latency
-- reads, and a task handed back again and again (a breaker's probe, while the
-- mail provider refuses the sender) has waited since then, as have those behind it.
redis.call('HSET', KEYS[1], 'state', 'pending')
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[3], 1)
return 1

-- An operator's retry: a scheduled, retry or archived task becomes pending
-- now, at the back of the queue. An archived task gets its retries back (it
-- was archived because they were used up, or skipped); its last error stays
-- for the record.
-- KEYS[1] task key, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] retry, KEYS[5] archived
-- ARGV[1] id, ARGV[2] wake channel
-- Returns the state the task was in; a task that is pending, active or
-- completed already, or that does not exist ('missing'), is left alone.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
local sets = {scheduled = KEYS[3], retry = KEYS[4], archived = KEYS[5]}
local set = sets[state]
if not set then return state end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
redis.call('ZREM', set, ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'pending', 'pending_since', now)
if state == 'archived' then redis.call('HSET', KEYS[1], 'retried', '0') end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 1)
return state

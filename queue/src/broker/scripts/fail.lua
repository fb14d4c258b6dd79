-- A run failed: retry later, or archive once retries are used up (or at once when
-- the handler said so).
-- KEYS[1] task key, KEYS[2] active, KEYS[3] retry, KEYS[4] archived
-- ARGV[1] id, ARGV[2] delivery, ARGV[3] error, ARGV[4] retry delay ms, ARGV[5] archive now (1/0), ARGV[6] wake channel
-- Returns {'retry', due_ms}, {'archived', archived_at_ms}, or {'lost'} when this
-- delivery no longer holds an active run (the lease was lost, or the run was
-- settled already: a second call must not count a second retry).
local f = redis.call('HMGET', KEYS[1], 'deliveries', 'state', 'retried', 'max_retry')
if f[1] ~= ARGV[2] or f[2] ~= 'active' then return {'lost'} end
-- Numbers are written as integer text: some Redis versions (7.2.0-7.2.4)
-- format a Lua number passed to redis.call as 1e+08.
local function int(n) return string.format('%d', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
local retried, max_retry = tonumber(f[3]), tonumber(f[4])
redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'last_failed_at', int(now))
if ARGV[5] == '1' or retried >= max_retry then
  redis.call('HSET', KEYS[1], 'state', 'archived')
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  return {'archived', now}
end
redis.call('HSET', KEYS[1], 'state', 'retry', 'retried', int(retried + 1))
local due = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[3], due, ARGV[1])
-- The promoter may be asleep until a later due time: tell it.
redis.call('PUBLISH', ARGV[6], 0)
return {'retry', due}

-- Move due scheduled and retry tasks to pending, and recover tasks whose lease
-- expired (their worker died): such a run counts as a failed attempt.
-- KEYS[1] task key prefix, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] retry,
-- KEYS[5] active, KEYS[6] archived, KEYS[7] delivery counter
-- ARGV[1] wake channel, ARGV[2] most tasks moved per set per call
-- Returns {moved to pending, recovered leases, ms until the next due task,
-- {kinds of the recovered archived}, {kinds of the recovered retried}}; the
-- third is nil (false) when nothing is scheduled, waiting to retry or leased.
-- The kinds are for the metrics: such runs never reach a worker's record.
-- Numbers are written as integer text: some Redis versions (7.2.0-7.2.4)
-- format a Lua number passed to redis.call as 1e+08.
local function int(n) return string.format('%d', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
local moved, recovered = 0, 0
local archived_kinds, retried_kinds = {}, {}
for _, set in ipairs({KEYS[3], KEYS[4]}) do
  local ids = redis.call('ZRANGE', set, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    redis.call('ZREM', set, id)
    redis.call('HSET', KEYS[1] .. id, 'state', 'pending', 'pending_since', int(now))
    redis.call('LPUSH', KEYS[2], id)
    moved = moved + 1
  end
end
local expired = redis.call('ZRANGE', KEYS[5], '-inf', now, 'BYSCORE', 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local key = KEYS[1] .. id
  redis.call('ZREM', KEYS[5], id)
  -- A new delivery number fences off the worker that lost the lease.
  redis.call('HSET', key, 'deliveries', int(redis.call('INCR', KEYS[7])))
  local f = redis.call('HMGET', key, 'retried', 'max_retry', 'kind')
  local retried, max_retry = tonumber(f[1]), tonumber(f[2])
  local kind = f[3] or ''
  redis.call('HSET', key, 'last_error', 'lease expired: the worker running the task stopped', 'last_failed_at', int(now))
  if retried == nil or retried >= (max_retry or 0) then
    redis.call('HSET', key, 'state', 'archived')
    redis.call('ZADD', KEYS[6], now, id)
    table.insert(archived_kinds, kind)
  else
    redis.call('HSET', key, 'state', 'pending', 'retried', int(retried + 1), 'pending_since', int(now))
    redis.call('LPUSH', KEYS[2], id)
    table.insert(retried_kinds, kind)
    moved = moved + 1
  end
  recovered = recovered + 1
end
if moved > 0 then redis.call('PUBLISH', ARGV[1], moved) end
local next_due = false
for _, set in ipairs({KEYS[3], KEYS[4], KEYS[5]}) do
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(0, tonumber(first[2]) - now)
    if not next_due or wait < next_due then next_due = wait end
  end
end
return {moved, recovered, next_due, archived_kinds, retried_kinds}

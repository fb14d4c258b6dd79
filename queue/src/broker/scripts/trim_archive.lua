-- Keep a queue's archive within its limits: tasks archived longer ago than
-- the age limit go first, then the oldest beyond the size limit, their
-- hashes with them; but the size limit never removes a task archived within
-- the protected age (a storm of failures is kept whole for an operator to
-- retry, over the limit if need be). At most ARGV[3] per call, so that one
-- call stays short; the next archiving trims the rest.
-- KEYS[1] task key prefix, KEYS[2] archived
-- ARGV[1] max_age_ms, ARGV[2] max_size, ARGV[3] most removed per call,
-- ARGV[4] protected_ms
-- Returns how many tasks were removed. Running it twice is the same as once.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[3])
local removed = 0
local function drop(ids)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[2], id)
    redis.call('DEL', KEYS[1] .. id)
    removed = removed + 1
  end
end
local oldest = string.format('%d', now - tonumber(ARGV[1]))
drop(redis.call('ZRANGE', KEYS[2], '-inf', '(' .. oldest, 'BYSCORE', 'LIMIT', 0, limit))
local extra = math.min(redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2]), limit - removed)
if extra > 0 then
  local unprotected = string.format('%d', now - tonumber(ARGV[4]))
  drop(redis.call('ZRANGE', KEYS[2], '-inf', unprotected, 'BYSCORE', 'LIMIT', 0, extra))
end
return removed

-- Enqueue a batch of tasks into one queue; an id that already exists is left alone.
-- KEYS[1] task key prefix, KEYS[2] pending, KEYS[3] scheduled
-- ARGV[1] wake channel, then 6 per task: id, kind, payload, max_retry, timeout_ms, process_at_ms
-- Returns one flag per task: 1 enqueued now, 0 already present
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local flags, added, pending = {}, 0, 0
for i = 2, #ARGV, 6 do
  local id = ARGV[i]
  local key = KEYS[1] .. id
  if redis.call('EXISTS', key) == 1 then
    table.insert(flags, 0)
  else
    local process_at = tonumber(ARGV[i + 5])
    local state = 'pending'
    if process_at > now then state = 'scheduled' end
    redis.call('HSET', key, 'kind', ARGV[i + 1], 'payload', ARGV[i + 2], 'max_retry', ARGV[i + 3],
      'timeout_ms', ARGV[i + 4], 'process_at', process_at, 'retried', 0, 'deliveries', 0,
      'state', state, 'enqueued_at', now)
    if state == 'pending' then
      redis.call('LPUSH', KEYS[2], id)
      pending = pending + 1
    else
      redis.call('ZADD', KEYS[3], process_at, id)
    end
    added = added + 1
    table.insert(flags, 1)
  end
end
if added > 0 then redis.call('PUBLISH', ARGV[1], pending) end
return flags

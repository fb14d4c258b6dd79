-- Take up to N pending tasks, each under a lease.
-- KEYS[1] task key prefix, KEYS[2] pending, KEYS[3] active, KEYS[4] delivery counter,
-- KEYS[5] paused flag
-- ARGV[1] count, ARGV[2] lease_ms
-- Returns a flat list, 12 per task: id, kind, payload, retried, max_retry, timeout_ms,
-- request_id ('' for none), created_at (nil for a task enqueued before it was kept),
-- process_at, trace context (nil for none), first (1 when the task was never
-- handed out before: its hash's deliveries is still the enqueue's '0'), delivery.
-- `delivery` numbers this hand-out of the task: acks, retries and lease extensions
-- quote it, so a worker whose lease expired cannot touch the task a later worker
-- holds. It comes from a counter of the queue that never goes back, not from the
-- task's hash: a task id enqueued again after its hash expired must not hand out
-- a number an earlier run's worker may still hold.
--
-- Not safe to replay: a second run takes other tasks. The broker sends it once.
-- Numbers are written as integer text: some Redis versions (7.2.0-7.2.4)
-- format a Lua number passed to redis.call as 1e+08.
local function int(n) return string.format('%d', n) end
-- A paused queue hands out nothing (the operator's `queues pause`).
if redis.call('EXISTS', KEYS[5]) == 1 then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[2])
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('RPOP', KEYS[2])
  if not id then break end
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, 'kind', 'payload', 'retried', 'max_retry', 'timeout_ms',
    'request_id', 'created_at', 'process_at', 'trace', 'deliveries')
  if f[1] then
    local delivery = redis.call('INCR', KEYS[4])
    redis.call('HSET', key, 'deliveries', int(delivery), 'state', 'active')
    redis.call('ZADD', KEYS[3], deadline, id)
    table.insert(out, id)
    for j = 1, 9 do table.insert(out, f[j]) end
    table.insert(out, f[10] == '0' and 1 or 0)
    table.insert(out, delivery)
  end
end
return out

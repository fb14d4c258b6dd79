-- Enqueue a batch of tasks into one queue; an id that already exists is left alone.
-- KEYS[1] task key prefix, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] enqueue counter,
-- KEYS[5] the producer's cursor
-- ARGV[1] wake channel; ARGV[2] the cursor check: 'none' (the cursor is left alone),
-- 'absent' (there must be none) or 'is' (it must be ARGV[3]); ARGV[4] the cursor's
-- new value (when checked); then 9 per task: id, kind, payload, max_retry, timeout_ms,
-- process_at_ms, request_id ('' for none), created_at_ms (the outbox row's),
-- trace context ('' for none; kept only when there is one)
-- Returns one flag per task: 1 enqueued now, 0 already present; or, when the
-- cursor is not where the caller said, {-1, the cursor (false when none)}
-- and nothing is written but the enqueue counter (so that a WAIT after it
-- covers whatever write moved the cursor there).
--
-- The cursor makes a producer's batches a chain: each names the position it
-- was read from, so two producers reading the same rows cannot both move it,
-- and the position and the tasks it covers are written together or not at all.
--
-- This runs once per relay batch, so its cost per task bounds the relay's drain
-- rate. Values are written as the strings they arrived as: a Lua number passed
-- to redis.call is formatted back with printf, which costs more than the HSET.
-- pending_since (the queue's latency is the age of its oldest pending task)
-- is overwritten when a scheduled task becomes pending.
-- New pending ids are pushed in one LPUSH per chunk (the same order as one push
-- each), a chunk staying well below Lua's limit on unpacked values.
-- Refused before anything is written when a list or set has the wrong type:
-- a script that fails half-way keeps what it wrote, and a task hash whose id
-- is in no list would turn every later enqueue of the id into a no-op.
local check = ARGV[2]
if check ~= 'none' then
  local at = redis.call('GET', KEYS[5])
  if (check == 'absent' and at) or (check == 'is' and at ~= ARGV[3]) then
    redis.call('INCR', KEYS[4])
    return {-1, at}
  end
end
for i, want in ipairs({'list', 'zset'}) do
  local have = redis.call('TYPE', KEYS[i + 1])['ok']
  if have ~= 'none' and have ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i + 1] .. ' is a ' .. have .. ', not a ' .. want)
  end
end
local t = redis.call('TIME')
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local now_ms = tonumber(now)
local flags, fresh = {}, {}
local added = 0
for i = 5, #ARGV, 9 do
  local id = ARGV[i]
  local key = KEYS[1] .. id
  if redis.call('EXISTS', key) == 1 then
    flags[#flags + 1] = 0
  else
    local process_at = ARGV[i + 5]
    local state = 'pending'
    if tonumber(process_at) > now_ms then state = 'scheduled' end
    redis.call('HSET', key, 'kind', ARGV[i + 1], 'payload', ARGV[i + 2], 'max_retry', ARGV[i + 3],
      'timeout_ms', ARGV[i + 4], 'process_at', process_at, 'retried', '0', 'deliveries', '0',
      'state', state, 'enqueued_at', now, 'pending_since', now,
      'request_id', ARGV[i + 6], 'created_at', ARGV[i + 7])
    if ARGV[i + 8] ~= '' then redis.call('HSET', key, 'trace', ARGV[i + 8]) end
    if state == 'pending' then
      fresh[#fresh + 1] = id
    else
      redis.call('ZADD', KEYS[3], process_at, id)
    end
    added = added + 1
    flags[#flags + 1] = 1
  end
end
-- Every call writes, even when every id was known already: a WAIT after it
-- (REDIS_WAIT_REPLICAS) waits for this connection's last write, and the
-- replication stream is in order, so its acknowledgement also covers an
-- earlier enqueue of the same ids that another connection made and whose
-- WAIT failed. A call that wrote nothing would pass its WAIT at once.
redis.call('INCR', KEYS[4])
if check ~= 'none' then redis.call('SET', KEYS[5], ARGV[4]) end
local chunk = 1000
for from = 1, #fresh, chunk do
  redis.call('LPUSH', KEYS[2], unpack(fresh, from, math.min(from + chunk - 1, #fresh)))
end
if added > 0 then redis.call('PUBLISH', ARGV[1], #fresh) end
return flags

-- Runs succeeded: each task leaves the active set. Its hash stays, stripped of
-- the payload and the trace context, for the retention time, so that enqueuing the same id again (a relay
-- re-enqueuing after a crash) stays a no-op.
-- KEYS[1] task key prefix, KEYS[2] active
-- ARGV[1] retention_ms (0: delete at once), then 2 per task: id, delivery
-- Returns one flag per task: 1, or 0 when this delivery no longer holds an
-- active run: the lease was lost (another worker has the task and will settle
-- it), or the run was settled already.
local retention = tonumber(ARGV[1])
local flags = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local key = KEYS[1] .. id
  local f = redis.call('HMGET', key, 'deliveries', 'state')
  if f[1] ~= ARGV[i + 1] or f[2] ~= 'active' then
    table.insert(flags, 0)
  else
    redis.call('ZREM', KEYS[2], id)
    if retention > 0 then
      redis.call('HSET', key, 'state', 'completed')
      redis.call('HDEL', key, 'payload', 'trace')
      redis.call('PEXPIRE', key, ARGV[1])
    else
      redis.call('DEL', key)
    end
    table.insert(flags, 1)
  end
end
return flags

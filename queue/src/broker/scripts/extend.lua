-- Extend the leases of the tasks this worker still runs.
-- KEYS[1] task key prefix, KEYS[2] active
-- ARGV[1] lease_ms, then pairs: id, delivery
-- Returns the ids whose lease was lost: their delivery number moved on, because
-- the lease expired (promote.lua fences the worker off that way) or the task
-- was handed out again; or their hash is gone (Redis lost it, or the archive
-- trimmed it), so nothing stops another delivery. A task this worker itself
-- finished or handed back since it listed its leases keeps our delivery
-- number: neither extended nor reported.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local f = redis.call('HMGET', KEYS[1] .. id, 'deliveries', 'state')
  local ours = f[1] == ARGV[i + 1]
  -- Active with our delivery number means in the active set; XX would not
  -- add it back anyway.
  if ours and f[2] == 'active' then
    redis.call('ZADD', KEYS[2], 'XX', deadline, id)
  elseif not ours then
    table.insert(lost, id)
  end
end
return lost

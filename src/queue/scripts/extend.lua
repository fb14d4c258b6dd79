-- Extend the leases of the tasks this worker still runs.
-- KEYS[1] task key prefix, KEYS[2] active
-- ARGV[1] lease_ms, then pairs: id, delivery
-- Returns the ids whose lease was lost.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[1] .. id, 'deliveries') == ARGV[i + 1] and redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[2], 'XX', deadline, id)
  else
    table.insert(lost, id)
  end
end
return lost

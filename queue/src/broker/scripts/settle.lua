-- A run completed (its ledger row is written) but its lease was lost before
-- the acknowledgement, so the promoter may have moved the task on: to
-- pending or retry for another attempt, or to the archive as "lease expired".
-- Mark it completed wherever it is, so Redis does not contradict the ledger.
-- A task another worker holds now is left alone: that worker finds the ledger
-- row and acknowledges it.
-- KEYS[1] task key, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] retry, KEYS[5] archived
-- ARGV[1] id, ARGV[2] retention_ms (0: delete at once)
-- Returns 1 when marked completed here, 0 when left alone. Running it twice is
-- the same as once.
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
elseif state == 'scheduled' then
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif state == 'retry' then
  redis.call('ZREM', KEYS[4], ARGV[1])
elseif state == 'archived' then
  redis.call('ZREM', KEYS[5], ARGV[1])
else
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], 'state', 'completed')
  redis.call('HDEL', KEYS[1], 'payload')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1

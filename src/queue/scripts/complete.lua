-- A run succeeded: the task leaves the active set. Its hash stays, stripped of
-- the payload, for the retention time, so that enqueuing the same id again (a relay
-- re-forwarding after a crash) stays a no-op.
-- KEYS[1] task key, KEYS[2] active
-- ARGV[1] id, ARGV[2] delivery, ARGV[3] retention_ms (0: delete at once)
-- Returns 1, or 0 when the lease was lost (the task was handed to someone else).
if redis.call('HGET', KEYS[1], 'deliveries') ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], 'state', 'completed')
  redis.call('HDEL', KEYS[1], 'payload')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1

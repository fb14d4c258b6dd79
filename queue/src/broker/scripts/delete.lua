-- An operator's delete: the task leaves its list or set and keeps only a
-- tombstone (state 'deleted', no payload) for the retention time, so that an
-- enqueue of the id meanwhile (a relay forwarding its batch again after a
-- crash, `relay --once --redeliver-since`) stays a no-op rather than bringing
-- it back. An active task is refused: its worker would finish it and find
-- nothing to acknowledge, while the effect happened. A completed task is left
-- as it is: its hash is already what keeps a repeat away.
-- KEYS[1] task key, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] retry, KEYS[5] archived
-- ARGV[1] id, ARGV[2] tombstone retention_ms (0: delete the hash at once)
-- Returns the state the task was in ('missing' when it does not exist).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'active' or state == 'completed' or state == 'deleted' then return state end
local sets = {scheduled = KEYS[3], retry = KEYS[4], archived = KEYS[5]}
if state == 'pending' then
  -- O(length of the list): an operator's command, not a hot path.
  redis.call('LREM', KEYS[2], 0, ARGV[1])
elseif sets[state] then
  redis.call('ZREM', sets[state], ARGV[1])
end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], 'state', 'deleted')
  redis.call('HDEL', KEYS[1], 'payload')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return state

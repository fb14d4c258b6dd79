-- An operator's delete: the task is removed from its list or set and its
-- hash deleted. An active task is refused: its worker would finish it and
-- find nothing to acknowledge, while the effect happened.
-- KEYS[1] task key, KEYS[2] pending, KEYS[3] scheduled, KEYS[4] retry, KEYS[5] archived
-- ARGV[1] id
-- Returns the state the task was in ('missing' when it does not exist); an
-- active task is left alone.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'active' then return state end
local sets = {scheduled = KEYS[3], retry = KEYS[4], archived = KEYS[5]}
if state == 'pending' then
  -- O(length of the list): an operator's command, not a hot path.
  redis.call('LREM', KEYS[2], 0, ARGV[1])
elseif sets[state] then
  redis.call('ZREM', sets[state], ARGV[1])
end
redis.call('DEL', KEYS[1])
return state

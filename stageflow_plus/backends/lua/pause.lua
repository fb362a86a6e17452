-- stageflow-plus: pause a key for every process (a provider's Retry-After).
--
-- KEYS: the pause key; ARGV: milliseconds. Keeps the later of two pauses.
-- Returns the pause left, ms.
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return left

-- stageflow-plus: heartbeat; push the expiry of held leases to now + ttl.
--
-- KEYS: concurrency ZSETs (may repeat); ARGV: ttl ms, then one lease id per key.
-- Returns the 1-based indexes of pairs whose lease was gone (expired or lost in a restart).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ttl = tonumber(ARGV[1])
local lost = {}
for i = 1, #KEYS do
  local k, member = KEYS[i], ARGV[i + 1]
  if redis.call('ZADD', k, 'XX', 'CH', now + ttl, member) == 0
     and not redis.call('ZSCORE', k, member) then
    lost[#lost + 1] = i
  elseif redis.call('PTTL', k) < ttl + 1000 then
    redis.call('PEXPIRE', k, math.ceil(ttl) + 1000)
  end
end
return lost

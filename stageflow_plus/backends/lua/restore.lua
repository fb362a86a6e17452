-- stageflow-plus: after Redis was unreachable, count again what this process still runs.
--
-- KEYS[1]: the queue hash, then one pool ZSET per permit. ARGV: prefix, aging ms, ttl ms,
-- then one lease id per pool key: the leases it held before the outage (lost if the server
-- restarted empty) and the calls it admitted on its local share (degrade). Each is (re)added
-- with expiry now + ttl, over the cap if need be: then no new grant passes the cap until
-- enough of them end. Returns how many were missing.
local now = now_ms()
local ttl = tonumber(ARGV[3])
local added = 0
for i = 2, #KEYS do
  added = added + redis.call('ZADD', KEYS[i], now + ttl, ARGV[2 + i])
  if redis.call('PTTL', KEYS[i]) < ttl + 1000 then
    redis.call('PEXPIRE', KEYS[i], math.ceil(ttl) + 1000)
  end
end
return added

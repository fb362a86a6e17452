-- stageflow-plus: heartbeat of one process: extend its leases and its waiters, count the
-- live processes, report waiters no longer queued, run the dispatch pass.
--
-- KEYS[1]: the queue hash, then one pool ZSET per held lease permit.
-- ARGV: prefix, aging ms, proc, ttl ms, then one lease id per pool key, then waiter ids.
-- Returns {lost: 1-based indexes of lease pairs gone, statuses of the waiter ids (1 still
-- queued, 2 granted, 0 gone), live processes, wake-at ms, now ms}.
local now = now_ms()
local proc, ttl = ARGV[3], tonumber(ARGV[4])
local procs = Q.p .. 'procs'
redis.call('ZADD', procs, now + ttl, proc)
redis.call('ZREMRANGEBYSCORE', procs, '-inf', now)
redis.call('PEXPIRE', procs, math.ceil(ttl) * 4)
redis.call('ZREMRANGEBYSCORE', Q.gr, '-inf', now - 10 * ttl)  -- grants nobody released
local lost = {}
local n = #KEYS - 1
for i = 1, n do
  local k, member = KEYS[i + 1], ARGV[4 + i]
  if redis.call('ZADD', k, 'XX', 'CH', now + ttl, member) == 0
     and not redis.call('ZSCORE', k, member) then
    lost[#lost + 1] = i
  elseif redis.call('PTTL', k) < ttl + 1000 then
    redis.call('PEXPIRE', k, math.ceil(ttl) + 1000)
  end
end
local statuses = {}
for i = 5 + n, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', Q.wait, id) == 1 then
    redis.call('ZADD', Q.exp, 'XX', now + ttl, id)
    statuses[#statuses + 1] = 1
  elseif redis.call('ZSCORE', Q.gr, id) then
    statuses[#statuses + 1] = 2
  else
    statuses[#statuses + 1] = 0
  end
end
local _, wake_at, owner = dispatch(now, nil, 128)
return {lost, statuses, redis.call('ZCARD', procs),
        wake_at and string.format('%.3f', wake_at) or '', string.format('%.3f', now), owner}

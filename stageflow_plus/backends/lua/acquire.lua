-- stageflow-plus: acquire global permits for one call, all or nothing, in one round trip.
--
-- KEYS: nc concurrency ZSETs (member = lease id, score = expiry ms), then nb GCRA keys
--       (value = theoretical arrival time, ms), then np pause keys (alive while paused).
-- ARGV: lease id, ttl ms, nc, nb, np, nc limits, then per bucket: interval ms per unit,
--       tolerance ms (burst * interval), amount.
-- Time comes from the server (TIME), never from a client. Arrival times are stored with
-- '%.6f' (tostring keeps 14 digits: ~0.1 ms at today's epoch, which would lose small steps).
-- Returns {1, 0, '', '', now_us} when granted, {0, wait_us, reason, key, now_us} when not:
-- reason is 'paused' / 'rate' (wait exact) or 'concurrency' (wait = upper bound: the
-- earliest lease expiry; a release may come sooner).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
local ttl = tonumber(ARGV[2])
local nc, nb, np = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait, reason, rkey = 0, '', ''

local function block(w, why, k)
  if w > wait or reason == '' then wait, reason, rkey = w, why, k end
end

for i = 1, np do
  local k = KEYS[nc + nb + i]
  local left = redis.call('PTTL', k)
  if left > 0 then block(left, 'paused', k) end
end

for i = 1, nc do
  local k = KEYS[i]
  local limit = tonumber(ARGV[5 + i])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)  -- leases of crashed holders
  if redis.call('ZCARD', k) >= limit then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    block(math.max(0, tonumber(first[2]) - now), 'concurrency', k)
  end
end

local tats = {}
for i = 1, nb do
  local k = KEYS[nc + i]
  local a = 6 + nc + (i - 1) * 3
  local interval, tolerance, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tat = tonumber(redis.call('GET', k) or now)
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local allow_at = new_tat - tolerance
  if allow_at > now then block(allow_at - now, 'rate', k) end
  tats[i] = new_tat
end

if reason ~= '' then
  return {0, math.ceil(wait * 1000), reason, rkey, now_us}
end

for i = 1, nc do
  local k = KEYS[i]
  redis.call('ZADD', k, now + ttl, member)
  if redis.call('PTTL', k) < ttl + 1000 then redis.call('PEXPIRE', k, math.ceil(ttl) + 1000) end
end
for i = 1, nb do
  local ms = math.ceil(tats[i] - now) + 1000
  redis.call('SET', KEYS[nc + i], string.format('%.6f', tats[i]), 'PX', ms)
end
return {1, 0, '', '', now_us}

-- stageflow-plus: the global wait queue, shared by every script (prepended to each).
--
-- Every key lives under one hash tag ("{prefix}:"), so a script's keys share one Cluster
-- slot. ARGV[1] is that prefix, ARGV[2] the aging interval in ms ('' = strict priorities).
--
-- The queue (one per prefix, every process's waiters):
--   q:wait   HASH  id -> waiter (JSON: o proc, p priority, e enqueued ms, s start tag,
--                   l lease ttl ms, c {{pool key, cap}}, b {{bucket key, interval ms,
--                   tolerance ms, amount}}, z {pause keys})
--   q:lv:<p> ZSET  id -> start tag (weighted fair order within priority p)
--   q:ar:<p> ZSET  id -> enqueued ms (arrival order within p: a level's age)
--   q:levels ZSET  p -> p (levels with waiters)
--   q:exp    ZSET  id -> expiry ms (its process heartbeats it; a crashed one's waiters lapse)
--   q:n      HASH  resource key -> waiters needing it
--   q:vt     STRING system virtual time (start tag of the last grant)
--   q:ft     HASH  tenant -> finish tag of its last queued call
--   q:gr     ZSET  id -> grant ms (granted through the queue, not yet released)
--   wake:<proc> LIST 'id@grant ms' of that process's waiters granted (it BLPOPs them)
-- Time is the server's (TIME), in ms.
local Q = {}
Q.p = ARGV[1]
Q.aging = tonumber(ARGV[2])
Q.wait, Q.exp, Q.levels = Q.p .. 'q:wait', Q.p .. 'q:exp', Q.p .. 'q:levels'
Q.n, Q.vt, Q.ft, Q.gr = Q.p .. 'q:n', Q.p .. 'q:vt', Q.p .. 'q:ft', Q.p .. 'q:gr'

local function lv(p) return Q.p .. 'q:lv:' .. p end
local function ar(p) return Q.p .. 'q:ar:' .. p end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

-- per-script caches: a pool's lease count after its purge, a bucket's arrival time
local used, tats = {}, {}
local function pool_used(k, now)
  local n = used[k]
  if n == nil then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)  -- leases of crashed holders
    n = redis.call('ZCARD', k)
    used[k] = n
  end
  return n
end
local function tat_of(k, now)
  local t = tats[k]
  if t == nil then
    t = tonumber(redis.call('GET', k) or now)
    tats[k] = t
  end
  if t < now then return now end
  return t
end

-- Whether spec can go now. Returns ok, latest (ms when every blocker may have cleared:
-- the wait; nil if unknown), earliest (ms when the first blocker may clear), reason, key.
-- `blocked` (may be nil): keys reserved by better waiters of this pass; a key reserved
-- holds spec back, a key found unavailable is reserved in turn.
local function check(s, now, blocked)
  local ok, latest, earliest, why, key = true, nil, nil, '', ''
  local function block(t, r, k)
    if ok or (t ~= nil and (latest == nil or t > latest)) then latest, why, key = t, r, k end
    if t ~= nil and (earliest == nil or t < earliest) then earliest = t end
    ok = false
  end
  local found = {}
  for _, k in ipairs(s.z) do
    if blocked and blocked[k] then ok = false else
      local left = redis.call('PTTL', k)
      if left > 0 then block(now + left, 'paused', k); found[#found + 1] = k end
    end
  end
  for _, c in ipairs(s.c) do
    local k = c[1]
    if blocked and blocked[k] then ok = false
    elseif pool_used(k, now) >= c[2] then
      local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
      block(tonumber(first[2]), 'concurrency', k)  -- earliest expiry: an upper bound
      found[#found + 1] = k
    end
  end
  for _, b in ipairs(s.b) do
    local k = b[1]
    if blocked and blocked[k] then ok = false else
      local allow_at = tat_of(k, now) + b[4] * b[2] - b[3]
      if allow_at > now then block(allow_at, 'rate', k); found[#found + 1] = k end
    end
  end
  if blocked then for _, k in ipairs(found) do blocked[k] = true end end
  return ok, latest, earliest, why, key
end

-- Take everything spec needs (the caller checked): lease `id` in each pool, GCRA charge.
local function take(id, s, now)
  for _, c in ipairs(s.c) do
    local k = c[1]
    redis.call('ZADD', k, now + s.l, id)
    if redis.call('PTTL', k) < s.l + 1000 then redis.call('PEXPIRE', k, math.ceil(s.l) + 1000) end
    used[k] = (used[k] or 0) + 1
  end
  for _, b in ipairs(s.b) do
    local k = b[1]
    local t = tat_of(k, now) + b[4] * b[2]
    tats[k] = t
    redis.call('SET', k, string.format('%.6f', t), 'PX', math.ceil(t - now) + 1000)
  end
end

local function all_keys(s)
  local keys = {}
  for _, k in ipairs(s.z) do keys[#keys + 1] = k end
  for _, c in ipairs(s.c) do keys[#keys + 1] = c[1] end
  for _, b in ipairs(s.b) do keys[#keys + 1] = b[1] end
  return keys
end

-- Take waiter id (spec s) out of the queue structures.
local function unqueue(id, s)
  redis.call('HDEL', Q.wait, id)
  redis.call('ZREM', lv(s.p), id)
  redis.call('ZREM', ar(s.p), id)
  redis.call('ZREM', Q.exp, id)
  if redis.call('ZCARD', ar(s.p)) == 0 then redis.call('ZREM', Q.levels, s.p) end
  for _, k in ipairs(all_keys(s)) do
    if redis.call('HINCRBY', Q.n, k, -1) <= 0 then redis.call('HDEL', Q.n, k) end
  end
end

-- Queue a waiter: start tag S = max(V, F_tenant), F_tenant = S + weighted cost.
local function enqueue(id, s, tenant, wcost, now, ttl)
  local v = tonumber(redis.call('GET', Q.vt) or 0)
  local f = tonumber(redis.call('HGET', Q.ft, tenant) or 0)
  local start = math.max(v, f)
  redis.call('HSET', Q.ft, tenant, string.format('%.9g', start + wcost))
  s.s, s.e = start, now
  redis.call('HSET', Q.wait, id, cjson.encode(s))
  redis.call('ZADD', lv(s.p), start, id)
  redis.call('ZADD', ar(s.p), now, id)
  redis.call('ZADD', Q.levels, s.p, s.p)
  redis.call('ZADD', Q.exp, now + ttl, id)
  for _, k in ipairs(all_keys(s)) do redis.call('HINCRBY', Q.n, k, 1) end
end

local function drop(id)
  local raw = redis.call('HGET', Q.wait, id)
  if raw then unqueue(id, cjson.decode(raw)) else redis.call('ZREM', Q.exp, id) end
end

-- The dispatch pass: walk the waiters best-first (the most aged priority level; within it
-- the smallest start tag), grant whoever can go, let a waiter that cannot reserve what it
-- is blocked on (nobody behind it takes that in this pass). `me`: the caller's own waiter
-- (not woken through its list). Returns me_granted, wake-at ms (or nil), and the process of
-- the waiter that wake-at is for (it runs the next pass; the others only as a fallback).
local function dispatch(now, me, budget)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.exp, '-inf', now, 'LIMIT', 0, 64)) do
    drop(id)  -- its process stopped heartbeating: blocks nobody
  end
  local waiting = redis.call('HLEN', Q.wait)
  if waiting == 0 then return false, nil, '' end
  local levels = {}
  for _, p in ipairs(redis.call('ZRANGE', Q.levels, 0, -1)) do
    local ids = redis.call('ZRANGE', lv(p), 0, budget - 1)
    local first = redis.call('ZRANGE', ar(p), 0, 0, 'WITHSCORES')
    if #ids > 0 and first[2] then
      levels[#levels + 1] = {p = p, pr = tonumber(p), ids = ids, i = 1, old = tonumber(first[2])}
    end
  end
  local blocked, mine, wake_at, wake_proc, seen = {}, false, nil, '', 0
  while seen < budget do
    local best, best_key = nil, nil
    for _, l in ipairs(levels) do
      if l.i <= #l.ids then
        local key = -l.pr
        if Q.aging then key = l.old - l.pr * Q.aging end
        if best == nil or key < best_key then best, best_key = l, key end
      end
    end
    if best == nil then break end
    local id = best.ids[best.i]
    best.i, seen = best.i + 1, seen + 1
    local raw = redis.call('HGET', Q.wait, id)
    if raw then
      local s = cjson.decode(raw)
      local ok, _, at = check(s, now, blocked)
      if ok then
        take(id, s, now)
        unqueue(id, s)
        waiting = waiting - 1
        redis.call('SET', Q.vt, string.format('%.9g', s.s))
        redis.call('ZADD', Q.gr, now, id)
        if id == me then mine = true else
          local box = Q.p .. 'wake:' .. s.o
          redis.call('RPUSH', box, id .. '@' .. string.format('%.3f', now))
          redis.call('PEXPIRE', box, math.ceil(s.l) * 4)
        end
        local first = redis.call('ZRANGE', ar(best.p), 0, 0, 'WITHSCORES')
        best.old = tonumber(first[2]) or best.old
        if waiting == 0 then break end
      else
        if at ~= nil and (wake_at == nil or at < wake_at) then wake_at, wake_proc = at, s.o end
        -- every remaining waiter needs a reserved resource: nobody else can go
        local stop = false
        for k in pairs(blocked) do
          if tonumber(redis.call('HGET', Q.n, k) or 0) >= waiting then stop = true break end
        end
        if stop then break end
      end
    end
  end
  return mine, wake_at, wake_proc
end

#!lua name=@LIB@
-- stageflow-plus: the global wait queue of the Redis backend and all its entry points.
--
-- Loaded once per server as a Redis 7 FUNCTION library: `FCALL @LIB@_<entry> ...`. Where
-- FUNCTION is missing (Redis 6.x) or cannot be used (Cluster, a caller's own client), the
-- same source runs as one EVAL script per entry point, ending `return <entry>(KEYS, ARGV)`.
-- @LIB@ carries a digest of this file: versions sharing a server never mix.
--
-- Every key lives under one hash tag ("{prefix}:"), so a call's keys share one Cluster
-- slot. ARGV[1] of every entry point is that prefix, ARGV[2] the aging interval in ms (''
-- = strict priorities). The queue (one per prefix, every process's waiters):
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
--   q:gr     ZSET  id -> grant ms (granted through a mailbox, not yet released)
--   q:gone   ZSET  id -> expiry ms (cancelled before its acquire ran: it never will)
--   wake:<proc> LIST 'id@grant ms' of that process's waiters granted (it BLPOPs them)
--   procs    ZSET  process -> expiry ms (live processes)
-- Limits: pool:<name> ZSET lease -> expiry ms; gcra:<name> STRING theoretical arrival
-- time (ms); pause:<name> STRING with a TTL. Time is the server's (TIME), in ms.

local GT = (redis.REDIS_VERSION_NUM or 0) >= 0x070000  -- PEXPIRE ... GT

local names = {}       -- prefix -> its queue's key names (pure: safe to keep across calls)
local named = 0
local Q  -- this call's queue names (set by begin)
-- per-call caches: a pool's lease count, whether its expired leases were dropped, a
-- bucket's arrival time; emptied by begin when a call wrote them
local used, clean, tats, dirty = {}, {}, {}, false

local function begin(prefix, aging)
  local q = names[prefix]
  if q == nil then
    if named >= 64 then names, named = {}, 0 end
    q = {p = prefix, wait = prefix .. 'q:wait', exp = prefix .. 'q:exp',
         levels = prefix .. 'q:levels', n = prefix .. 'q:n', vt = prefix .. 'q:vt',
         ft = prefix .. 'q:ft', gr = prefix .. 'q:gr', gone = prefix .. 'q:gone',
         procs = prefix .. 'procs', lv = prefix .. 'q:lv:', ar = prefix .. 'q:ar:',
         wake = prefix .. 'wake:'}
    names[prefix], named = q, named + 1
  end
  Q = q
  Q.aging = tonumber(aging)
  if dirty then used, clean, tats, dirty = {}, {}, {}, false end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function fmt(x)
  if x == nil then return '' end
  return string.format('%.3f', x)
end

-- Make key k live at least ms more (never shorter: processes may use different ttls).
local function keep(k, ms, fresh)
  ms = math.ceil(ms)
  if fresh then redis.call('PEXPIRE', k, ms)
  elseif GT then redis.call('PEXPIRE', k, ms, 'GT')
  elseif redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end

-- Leases held in pool k (cached for the call). Leases of crashed holders are dropped only
-- when they matter: when the pool looks full.
local function pool_used(k, cap, now)
  local n = used[k]
  if n == nil then
    n = redis.call('ZCARD', k)
    used[k], dirty = n, true
  end
  if n >= cap and not clean[k] then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    n = redis.call('ZCARD', k)
    used[k], clean[k] = n, true
  end
  return n
end

local function tat_of(k, now)
  local t = tats[k]
  if t == nil then
    t = tonumber(redis.call('GET', k) or now) or now
    tats[k], dirty = t, true
  end
  if t < now then return now end
  return t
end

-- Whether spec s can go now. Returns ok, latest (ms when every blocker may have cleared:
-- the wait; nil if unknown), earliest (ms when the first blocker may clear), reason, key.
-- `blocked` (may be nil): keys reserved by better waiters of this pass; a key reserved
-- holds s back, a key found unavailable is reserved in turn.
local function check(s, now, blocked)
  local ok, latest, earliest, why, key = true, nil, nil, '', ''
  local found
  local function block(t, r, k)
    if ok or (t ~= nil and (latest == nil or t > latest)) then latest, why, key = t, r, k end
    if t ~= nil and (earliest == nil or t < earliest) then earliest = t end
    ok = false
    if blocked then found = found or {}; found[#found + 1] = k end
  end
  for _, k in ipairs(s.z) do
    if blocked and blocked[k] then ok = false else
      local left = redis.call('PTTL', k)
      if left > 0 then block(now + left, 'paused', k) end
    end
  end
  for _, c in ipairs(s.c) do
    local k = c[1]
    if blocked and blocked[k] then ok = false
    elseif pool_used(k, c[2], now) >= c[2] then
      local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
      block(tonumber(first[2]), 'concurrency', k)  -- earliest expiry: an upper bound
    end
  end
  for _, b in ipairs(s.b) do
    local k = b[1]
    if blocked and blocked[k] then ok = false else
      local allow_at = tat_of(k, now) + b[4] * b[2] - b[3]
      if allow_at > now then block(allow_at, 'rate', k) end
    end
  end
  if found then for _, k in ipairs(found) do blocked[k] = true end end
  return ok, latest, earliest, why, key
end

-- Take everything s needs (the caller checked): lease `id` in each pool, GCRA charge.
local function take(id, s, now)
  for _, c in ipairs(s.c) do
    local k = c[1]
    local before = used[k] or 1
    redis.call('ZADD', k, now + s.l, id)
    keep(k, s.l + 1000, before == 0)
    used[k] = before + 1
  end
  for _, b in ipairs(s.b) do
    if b[4] ~= 0 then
      local k = b[1]
      local t = tat_of(k, now) + b[4] * b[2]
      tats[k] = t
      redis.call('SET', k, string.format('%.6f', t), 'PX', math.ceil(t - now) + 1000)
    end
  end
end

local function each_key(s, f)
  for _, k in ipairs(s.z) do f(k) end
  for _, c in ipairs(s.c) do f(c[1]) end
  for _, b in ipairs(s.b) do f(b[1]) end
end

-- Take waiter id (spec s) out of the queue structures.
local function unqueue(id, s)
  local lv, ar = Q.lv .. s.p, Q.ar .. s.p
  redis.call('HDEL', Q.wait, id)
  redis.call('ZREM', lv, id)
  redis.call('ZREM', ar, id)
  redis.call('ZREM', Q.exp, id)
  if redis.call('ZCARD', ar) == 0 then redis.call('ZREM', Q.levels, s.p) end
  each_key(s, function(k)
    if redis.call('HINCRBY', Q.n, k, -1) <= 0 then redis.call('HDEL', Q.n, k) end
  end)
end

-- Queue a waiter: start tag S = max(V, F_tenant), F_tenant = S + weighted cost.
local function enqueue(id, s, tenant, wcost, now, ttl)
  local v = tonumber(redis.call('GET', Q.vt) or 0)
  local f = tonumber(redis.call('HGET', Q.ft, tenant) or 0)
  local start = math.max(v, f)
  redis.call('HSET', Q.ft, tenant, string.format('%.9g', start + wcost))
  s.s, s.e = start, now
  redis.call('HSET', Q.wait, id, cjson.encode(s))
  redis.call('ZADD', Q.lv .. s.p, start, id)
  redis.call('ZADD', Q.ar .. s.p, now, id)
  redis.call('ZADD', Q.levels, s.p, s.p)
  redis.call('ZADD', Q.exp, now + ttl, id)
  each_key(s, function(k) redis.call('HINCRBY', Q.n, k, 1) end)
end

local function drop(id)
  local raw = redis.call('HGET', Q.wait, id)
  if raw then unqueue(id, cjson.decode(raw)) else redis.call('ZREM', Q.exp, id) end
end

-- The dispatch pass: walk the waiters best-first (the most aged priority level; within it
-- the smallest start tag), grant whoever can go, let a waiter that cannot reserve what it
-- is blocked on (nobody behind it takes that in this pass). `me`: the caller's own waiter
-- (answered directly, not through its mailbox). Returns me_granted, wake-at ms (or nil),
-- and the process of the waiter that wake-at is for (it runs the next pass; the others
-- only as a fallback).
local function dispatch(now, me, budget)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Q.exp, '-inf', now, 'LIMIT', 0, 64)) do
    drop(id)  -- its process stopped heartbeating: blocks nobody
  end
  local waiting = redis.call('HLEN', Q.wait)
  if waiting == 0 then return false, nil, '' end
  local levels = {}
  for _, p in ipairs(redis.call('ZRANGE', Q.levels, 0, -1)) do
    local ids = redis.call('ZRANGE', Q.lv .. p, 0, budget - 1)
    local first = redis.call('ZRANGE', Q.ar .. p, 0, 0, 'WITHSCORES')
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
        if id == me then mine = true else
          redis.call('ZADD', Q.gr, now, id)
          local box = Q.wake .. s.o
          redis.call('RPUSH', box, id .. '@' .. string.format('%.3f', now))
          redis.call('PEXPIRE', box, math.ceil(s.l) * 4)
        end
        local first = redis.call('ZRANGE', Q.ar .. best.p, 0, 0, 'WITHSCORES')
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

-- A pass, when anyone waits. Returns {wake-at ms, now ms, process it is for}, or blanks.
local function pass_if_waiting(now)
  if redis.call('EXISTS', Q.wait) == 0 then return '', '', '' end
  now = now or now_ms()
  local _, wake_at, owner = dispatch(now, nil, 128)
  return fmt(wake_at), fmt(now), owner
end

-- A plan: what every call of one shape needs (the same pools, buckets and pauses, from
-- one process). One JSON argument, parsed once per server and kept (a pure function of
-- its text): [prefix, aging ms, process, ttl ms, [[pool key, cap]...], [[bucket key,
-- interval ms, tolerance ms]...], [pause key...]].
local plans, planned = {}, 0

local function plan_of(text)
  local p = plans[text]
  if p == nil then
    local raw = cjson.decode(text)
    p = {prefix = raw[1], aging = raw[2], o = raw[3], l = tonumber(raw[4]), c = raw[5],
         b = raw[6], z = raw[7], nc = #raw[5], nb = #raw[6], np = #raw[7],
         ex = {raw[1] .. 'q:wait', raw[1] .. 'q:gone'}}
    for _, z in ipairs(raw[7]) do p.ex[#p.ex + 1] = z end
    if planned >= 256 then plans, planned = {}, 0 end
    plans[text], planned = p, planned + 1
  end
  begin(p.prefix, p.aging)
  return p
end

local fresh, tatv = {}, {}  -- scratch of the fast path (overwritten, never read across calls)

-- The fast path: nobody queued, no tombstone, no pause (one EXISTS: a pause key exists
-- only while it runs), every permit free. Touches each key of the plan once or twice and
-- allocates nothing but the answer. Returns the grant time (whole ms, a number), or nil
-- when the call must take the queue's path.
local function fast(p, id, argv, now)
  if redis.call('EXISTS', unpack(p.ex)) ~= 0 then return nil end
  for i = 1, p.nc do
    local c = p.c[i]
    local n = redis.call('ZCARD', c[1])
    if n >= c[2] then
      redis.call('ZREMRANGEBYSCORE', c[1], '-inf', now)  -- leases of crashed holders
      n = redis.call('ZCARD', c[1])
      if n >= c[2] then return nil end
    end
    fresh[i] = n == 0
  end
  for i = 1, p.nb do
    local b = p.b[i]
    local t = tonumber(redis.call('GET', b[1]) or now) or now
    if t < now then t = now end
    if t + tonumber(argv[7 + i]) * b[2] - b[3] > now then return nil end
    tatv[i] = t
  end
  for i = 1, p.nc do
    local k = p.c[i][1]
    redis.call('ZADD', k, now + p.l, id)
    keep(k, p.l + 1000, fresh[i])
  end
  for i = 1, p.nb do
    local amount = tonumber(argv[7 + i])
    if amount ~= 0 then
      local b = p.b[i]
      local t = tatv[i] + amount * b[2]
      redis.call('SET', b[1], string.format('%.6f', t), 'PX', math.ceil(t - now) + 1000)
    end
  end
  return math.floor(now)
end

-- acquire: a call's global permits, all or nothing, in one round trip.
-- KEYS: the queue hash (routes to the prefix's slot; the plan names the other keys).
-- ARGV: plan, id, mode ('try' | 'wait'), tenant, weighted cost, deadline ms left ('' =
--       none), priority, one amount per bucket of the plan.
-- Granted at once when nobody waits and every permit is free (the fast path). Otherwise
-- 'try' refuses, and 'wait' queues the call (refusing it when its own known wait exceeds
-- its deadline) and runs the dispatch pass, which may grant it at once.
-- Returns the grant time (ms, a number or a string) when granted at once; else {status, wait ms,
-- reason, key, now ms, wake-at ms, process}: status 1 granted (by the pass), 0 refused
-- ('try'), 2 queued (woken through its process's list), 3 refused by its deadline, 4
-- cancelled before it ran (a cancel left a tombstone): nothing taken.
local function acquire(keys, argv)
  local p = plan_of(argv[1])
  local id, mode = argv[2], argv[3]
  local now = now_ms()
  local granted = fast(p, id, argv, now)
  if granted then return granted end
  if redis.call('ZREM', Q.gone, id) == 1 then
    return {4, '', 'cancelled', '', fmt(now), ''}
  end
  local s = {o = p.o, l = p.l, p = tonumber(argv[7]), c = p.c, b = {}, z = p.z}
  for i = 1, p.nb do
    local b = p.b[i]
    s.b[i] = {b[1], b[2], b[3], tonumber(argv[7 + i])}
  end
  local ok, latest, _, why, key = check(s, now, nil)
  if ok and redis.call('HLEN', Q.wait) == 0 then
    take(id, s, now)
    return fmt(now)
  end
  if ok then why = 'queued' end
  local wait = latest and (latest - now) or nil
  if mode == 'try' then return {0, fmt(wait), why, key, fmt(now), ''} end
  local left = tonumber(argv[6])
  if left ~= nil and (left <= 0 or (why ~= 'concurrency' and wait ~= nil and wait > left)) then
    return {3, fmt(wait), why, key, fmt(now), ''}
  end
  enqueue(id, s, argv[4], tonumber(argv[5]), now, p.l)
  local mine, wake_at, owner = dispatch(now, id, 128)
  if mine then return {1, '0', '', '', fmt(now), fmt(wake_at), owner} end
  return {2, fmt(wait), why, key, fmt(now), fmt(wake_at), owner}
end

-- release: one lease, with token costs reconciled; then wake the next waiters.
-- KEYS: the queue hash. ARGV: plan, id, '1' if granted through a mailbox, then one delta
-- per bucket of the plan (actual - estimate, units; > 0 charges more, < 0 refunds).
-- Returns the permits still held (0: they had expired) when nobody waits; else {that,
-- wake-at ms, now ms, process}.
local function release(keys, argv)
  local p = plan_of(argv[1])
  local id = argv[2]
  local removed = 0
  for i = 1, p.nc do removed = removed + redis.call('ZREM', p.c[i][1], id) end
  if argv[3] == '1' then redis.call('ZREM', Q.gr, id) end
  local now = nil
  for i = 1, p.nb do
    local delta = tonumber(argv[3 + i])
    if delta ~= 0 then
      now = now or now_ms()
      local b = p.b[i]
      local tat = tat_of(b[1], now) + delta * b[2]
      tats[b[1]] = nil
      if tat > now then
        redis.call('SET', b[1], string.format('%.6f', tat), 'PX', math.ceil(tat - now) + 1000)
      else
        redis.call('DEL', b[1])  -- refunded back to a full bucket
      end
    end
  end
  if redis.call('EXISTS', Q.wait) == 0 then return removed end
  now = now or now_ms()
  local _, wake_at, owner = dispatch(now, nil, 128)
  return {removed, fmt(wake_at), fmt(now), owner}
end

-- cancel: a call gave up (cancelled, timed out, its answer lost). Exactly one of: it
-- leaves the queue; a grant that raced it is given back; or — its acquire has not run
-- yet (it was reordered behind this cancel) — a tombstone makes sure it never takes
-- anything (kept ARGV[4] ms).
-- KEYS: the queue hash, the call's pool ZSETs. ARGV: prefix, aging ms, id, tombstone ms.
-- Returns {1 still waiting, 0 granted (given back), 2 not run yet (tombstone); wake-at ms,
-- now ms, process}.
local function cancel(keys, argv)
  begin(argv[1], argv[2])
  local id = argv[3]
  local now = now_ms()
  local was = 1
  if redis.call('HEXISTS', Q.wait, id) == 1 then
    drop(id)
  else
    local found = redis.call('ZREM', Q.gr, id)
    for i = 2, #keys do found = found + redis.call('ZREM', keys[i], id) end
    if found > 0 then was = 0 else
      was = 2
      redis.call('ZREMRANGEBYSCORE', Q.gone, '-inf', now)
      redis.call('ZADD', Q.gone, now + tonumber(argv[4]), id)
      redis.call('PEXPIRE', Q.gone, math.ceil(tonumber(argv[4])) + 1000)
    end
  end
  local wake_at, at, owner = pass_if_waiting(now)
  return {was, wake_at, at, owner}
end

-- tick: run the dispatch pass (a bucket refilled, a pause or a lease expired).
-- KEYS: the queue hash. ARGV: prefix, aging ms. Returns {wake-at ms, now ms, process}.
local function tick(keys, argv)
  begin(argv[1], argv[2])
  local now = now_ms()
  local _, wake_at, owner = dispatch(now, nil, 128)
  return {fmt(wake_at), fmt(now), owner}
end

-- extend: the heartbeat of one process: extend its leases and its waiters, count the live
-- processes, report waiters no longer queued, run the dispatch pass.
-- KEYS: the queue hash, then one pool ZSET per held lease permit.
-- ARGV: prefix, aging ms, proc, ttl ms, then one lease id per pool key, then waiter ids.
-- Returns {lost: 1-based indexes of lease pairs gone, statuses of the waiter ids (1 still
-- queued, 2 granted, 0 gone), live processes, wake-at ms, now ms, process}.
local function extend(keys, argv)
  begin(argv[1], argv[2])
  local now = now_ms()
  local proc, ttl = argv[3], tonumber(argv[4])
  redis.call('ZADD', Q.procs, now + ttl, proc)
  redis.call('ZREMRANGEBYSCORE', Q.procs, '-inf', now)
  redis.call('PEXPIRE', Q.procs, math.ceil(ttl) * 4)
  redis.call('ZREMRANGEBYSCORE', Q.gr, '-inf', now - 10 * ttl)  -- grants nobody released
  local lost = {}
  local n = #keys - 1
  for i = 1, n do
    local k, member = keys[i + 1], argv[4 + i]
    if redis.call('ZADD', k, 'XX', 'CH', now + ttl, member) == 0
       and not redis.call('ZSCORE', k, member) then
      lost[#lost + 1] = i
    else
      keep(k, ttl + 1000, false)
    end
  end
  local statuses = {}
  for i = 5 + n, #argv do
    local id = argv[i]
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
  return {lost, statuses, redis.call('ZCARD', Q.procs), fmt(wake_at), fmt(now), owner}
end

-- restore: after Redis was unreachable, count again what this process still runs.
-- KEYS: the queue hash, then one pool ZSET per permit. ARGV: prefix, aging ms, ttl ms,
-- then one lease id per pool key: the leases it held before the outage (lost if the
-- server restarted empty) and the calls it admitted on its local share (degrade); then
-- pairs (GCRA key, ms owed) of the rate its local share spent and the refill since has
-- not covered. Each lease is (re)added with expiry now + ttl, over the cap if need be:
-- then no new grant passes the cap until enough of them end; each debt moves its
-- bucket's arrival time on. Returns how many leases were missing.
local function restore(keys, argv)
  begin(argv[1], argv[2])
  local now = now_ms()
  local ttl = tonumber(argv[3])
  local added = 0
  for i = 2, #keys do
    added = added + redis.call('ZADD', keys[i], now + ttl, argv[2 + i])
    if redis.call('PTTL', keys[i]) < ttl + 1000 then
      redis.call('PEXPIRE', keys[i], math.ceil(ttl) + 1000)
    end
  end
  for i = #keys + 3, #argv - 1, 2 do
    local k, owed = argv[i], tonumber(argv[i + 1])
    local t = tat_of(k, now) + owed
    redis.call('SET', k, string.format('%.6f', t), 'PX', math.ceil(t - now) + 1000)
  end
  return added
end

-- pause: pause a key for every process (a provider's Retry-After); keeps the later pause.
-- KEYS: the pause key; ARGV: milliseconds. Returns the pause left, ms.
local function pause(keys, argv)
  local ms = tonumber(argv[1])
  local left = redis.call('PTTL', keys[1])
  if left < ms then
    redis.call('SET', keys[1], '1', 'PX', ms)
    return ms
  end
  return left
end

redis.register_function('@LIB@_acquire', acquire)
redis.register_function('@LIB@_release', release)
redis.register_function('@LIB@_cancel', cancel)
redis.register_function('@LIB@_tick', tick)
redis.register_function('@LIB@_extend', extend)
redis.register_function('@LIB@_restore', restore)
redis.register_function('@LIB@_pause', pause)

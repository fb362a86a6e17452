-- stageflow-plus: acquire a call's global permits, all or nothing, in one round trip.
--
-- KEYS[1]: the queue hash (routes the script to the prefix's slot).
-- ARGV: prefix, aging ms, id, mode ('try' | 'wait'), ttl ms, tenant, weighted cost,
--       deadline ms left ('' = none), process, priority, nc, nb, np, then nc x (pool key,
--       cap), nb x (bucket key, interval ms, tolerance ms, amount), np x pause key.
--       (Flat, not JSON: the fast path decodes nothing; a queued waiter is stored as JSON.)
-- Granted at once when nobody waits and every permit is free (the fast path). Otherwise
-- 'try' refuses, and 'wait' queues the call (refusing it when its own known wait exceeds
-- its deadline) and runs the dispatch pass, which may grant it at once.
-- Returns {status, wait ms, reason, key, now ms, wake-at ms, its process}: status 1 granted,
-- 0 refused
-- ('try'), 2 queued (woken through its process's list), 3 refused by its deadline.
local now = now_ms()
local id, mode, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local left = tonumber(ARGV[8])
local nc, nb, np = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local s = {o = ARGV[9], p = tonumber(ARGV[10]), l = ttl, c = {}, b = {}, z = {}}
local a = 14
for i = 1, nc do s.c[i] = {ARGV[a], tonumber(ARGV[a + 1])}; a = a + 2 end
for i = 1, nb do
  s.b[i] = {ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
  a = a + 4
end
for i = 1, np do s.z[i] = ARGV[a]; a = a + 1 end
local fmt = function(x) if x == nil then return '' end return string.format('%.3f', x) end
local ok, latest, _, why, key = check(s, now, nil)
local queued = redis.call('HLEN', Q.wait)
if ok and queued == 0 then
  take(id, s, now)
  return {1, '0', '', '', fmt(now), ''}
end
if ok then why = 'queued' end
local wait = latest and (latest - now) or nil
if mode == 'try' then return {0, fmt(wait), why, key, fmt(now), ''} end
if left ~= nil and (left <= 0 or (why ~= 'concurrency' and wait ~= nil and wait > left)) then
  return {3, fmt(wait), why, key, fmt(now), ''}
end
enqueue(id, s, ARGV[6], tonumber(ARGV[7]), now, ttl)
local mine, wake_at, owner = dispatch(now, id, 128)
if mine then return {1, '0', '', '', fmt(now), fmt(wake_at), owner} end
return {2, fmt(wait), why, key, fmt(now), fmt(wake_at), owner}

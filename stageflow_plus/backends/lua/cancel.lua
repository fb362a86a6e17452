-- stageflow-plus: a queued call gave up (cancelled, timed out): leave the queue or, when a
-- grant raced the cancellation, give the permits back. Atomic: exactly one of the two.
--
-- KEYS[1]: the queue hash, then the call's pool ZSETs. ARGV: prefix, aging ms, id.
-- Returns {1 if it was still waiting (0: it had been granted, now released), wake-at ms}.
local now = now_ms()
local id = ARGV[3]
local was = 0
if redis.call('HEXISTS', Q.wait, id) == 1 then
  drop(id)
  was = 1
else
  for i = 2, #KEYS do redis.call('ZREM', KEYS[i], id) end
  redis.call('ZREM', Q.gr, id)
end
local _, wake_at, owner = dispatch(now, nil, 128)
return {was, wake_at and string.format('%.3f', wake_at) or '', string.format('%.3f', now),
        owner}

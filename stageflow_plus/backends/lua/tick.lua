-- stageflow-plus: run the dispatch pass (a bucket refilled, a pause or a lease expired).
--
-- KEYS[1]: the queue hash. ARGV: prefix, aging ms.
-- Returns {wake-at ms, now ms, process of the waiter it is for}.
local now = now_ms()
local _, wake_at, owner = dispatch(now, nil, 128)
return {wake_at and string.format('%.3f', wake_at) or '', string.format('%.3f', now), owner}

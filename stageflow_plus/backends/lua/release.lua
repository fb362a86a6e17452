-- stageflow-plus: release one lease, reconcile token costs, wake the next waiters.
--
-- KEYS[1]: the queue hash, then nc pool ZSETs, then nb GCRA keys.
-- ARGV: prefix, aging ms, id, nc, nb, then per bucket: interval ms per unit, delta units
--       (actual - estimate; > 0 charges more, < 0 refunds).
-- The dispatch pass then grants whoever can go now, in any process (pushed to its list).
-- Returns {permits still held (0: they had expired), wake-at ms}.
local now = now_ms()
local id, nc, nb = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local removed = 0
for i = 1, nc do
  removed = removed + redis.call('ZREM', KEYS[1 + i], id)
  used[KEYS[1 + i]] = nil
end
redis.call('ZREM', Q.gr, id)
for i = 1, nb do
  local a = 6 + (i - 1) * 2
  local interval, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  if delta ~= 0 then
    local k = KEYS[1 + nc + i]
    local tat = tat_of(k, now) + delta * interval
    tats[k] = nil
    if tat > now then
      redis.call('SET', k, string.format('%.6f', tat), 'PX', math.ceil(tat - now) + 1000)
    else
      redis.call('DEL', k)  -- refunded back to a full bucket
    end
  end
end
local _, wake_at, owner = dispatch(now, nil, 128)
return {removed, wake_at and string.format('%.3f', wake_at) or '', string.format('%.3f', now),
        owner}

-- stageflow-plus: release one lease and reconcile token costs, in one round trip.
--
-- KEYS: nc concurrency ZSETs, then nb GCRA keys.
-- ARGV: lease id, nc, nb, then per bucket: interval ms per unit, delta units
--       (actual - estimate; > 0 charges more, < 0 refunds).
-- Returns the number of permits that were still held (0 means they had expired).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local member = ARGV[1]
local nc, nb = tonumber(ARGV[2]), tonumber(ARGV[3])
local removed = 0
for i = 1, nc do
  removed = removed + redis.call('ZREM', KEYS[i], member)
end
for i = 1, nb do
  local a = 4 + (i - 1) * 2
  local interval, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  if delta ~= 0 then
    local k = KEYS[nc + i]
    local tat = tonumber(redis.call('GET', k) or now)
    if tat < now then tat = now end
    tat = tat + delta * interval
    if tat > now then
      redis.call('SET', k, string.format('%.6f', tat), 'PX', math.ceil(tat - now) + 1000)
    else
      redis.call('DEL', k)  -- refunded back to a full bucket
    end
  end
end
return removed

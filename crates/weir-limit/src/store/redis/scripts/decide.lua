-- weir: decide every counter of one request, atomically and all-or-nothing.
--
-- KEYS[i]   the counter of item i; all keys of one call share a hash tag (one slot).
-- ARGV[1]   the clock: "server" to use Redis TIME (the only clock in production), or
--           "<seconds>:<nanoseconds>" supplied by the caller (tests, exact replays).
-- ARGV[2]   the lease id for concurrency items (unique per decision).
-- ARGV[3]   the lease TTL in milliseconds (a lease expires if its holder dies).
-- ARGV[4+4(i-1) .. 7+4(i-1)], per item i:
--           "r", emission_ns, capacity_ns, cost   -- a GCRA rate counter (a string TAT)
--           "c", max, 0, 0                         -- a concurrency counter (a ZSET of leases)
--
-- Returns { now_seconds, now_nanoseconds, admitted (1|0), value_1, …, value_n } where a
-- value is the counter after the decision when admitted, as it stands when not: a TAT as
-- a decimal string of nanoseconds since the epoch, or the number of leases held.
--
-- Lua numbers are doubles, exact only below 2^53. Absolute times (~1.7e18 ns) are therefore
-- kept as (seconds, nanoseconds) pairs and never formed as one number; durations (at most
-- two days, < 2^53 ns) are exact as doubles. The GCRA step is the one in weir-limit's
-- gcra.rs: horizon = max(TAT - now, 0) + cost * emission; admit iff horizon <= capacity.

local now_s, now_n
if ARGV[1] == 'server' then
  local t = redis.call('TIME')
  now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000
else
  local s, n = string.match(ARGV[1], '^(%d+):(%d+)$')
  now_s, now_n = tonumber(s), tonumber(n)
end
local now_ms = now_s * 1000 + math.floor(now_n / 1000000)
local lease, ttl = ARGV[2], tonumber(ARGV[3])

local n = #KEYS
local admitted = 1
local current, horizon = {}, {}

for i = 1, n do
  local a = 4 + (i - 1) * 4
  if ARGV[a] == 'r' then
    local emission, capacity, cost = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local raw = redis.call('GET', KEYS[i])
    local ahead = 0
    if raw and #raw > 9 then
      local ts, tn = tonumber(string.sub(raw, 1, -10)), tonumber(string.sub(raw, -9))
      ahead = (ts - now_s) * 1e9 + (tn - now_n)
      if ahead < 0 then ahead = 0 end
    end
    current[i] = raw or '0'
    horizon[i] = ahead + cost * emission
    if horizon[i] > capacity then admitted = 0 end
  else
    local max = tonumber(ARGV[a + 1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now_ms)
    local held = redis.call('ZCARD', KEYS[i])
    current[i] = held
    if held >= max then admitted = 0 end
  end
end

local out = { now_s, now_n, admitted }
for i = 1, n do
  local a = 4 + (i - 1) * 4
  if admitted == 1 then
    if ARGV[a] == 'r' then
      local total = now_n + horizon[i]
      local nsec = math.fmod(total, 1e9)
      local sec = now_s + (total - nsec) / 1e9
      local tat = string.format('%d%09d', sec, nsec)
      -- The key lives exactly as long as the bucket is not whole: an expired key and an
      -- idle one are the same thing.
      redis.call('SET', KEYS[i], tat, 'PX', math.ceil(horizon[i] / 1e6) + 1)
      out[3 + i] = tat
    else
      redis.call('ZADD', KEYS[i], now_ms + ttl, lease)
      redis.call('PEXPIRE', KEYS[i], ttl)
      out[3 + i] = current[i] + 1
    end
  else
    out[3 + i] = current[i]
  end
end
return out

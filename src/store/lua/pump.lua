-- SMS-pumping counters (domain::pumping::PumpCounter, the same arithmetic): one hash per scope
-- key: the current window's index w, its sends s and verifications v, the previous window's ps
-- and pv, a block: its end b (Unix ms) and the counts when it was set, bs and bv, and the grace
-- slots: the current one's index g, its sends gs and the previous one's gp.
-- KEYS[1..n] the scopes' hashes
-- ARGV[1] operation: send, judge, unsend, verified, block, lift or index; ARGV[2] window (ms)
-- send: ARGV[3] enforce (1 or 0), ARGV[4] minimum conversion (per mille), ARGV[5] block length
--   (ms), ARGV[6] grace (ms, 0 = none), ARGV[7..] budget, min volume of each key. Returns {refused key index or 0, reason
--   (1 over budget, 2 blocked), wait_ms, then per key the end of the block this send set, or
--   0}; the key refusing with the longest wait is reported. With enforce and a refusal nothing
--   is counted and the per-key part is absent.
-- judge: ARGV[3..7..] as for send: blocks the keys whose
--   conversion is too low, without counting a send. Returns the block ends per key (or 0).
-- unsend / verified: one send taken back / one verification counted, in each key that exists
--   (see PumpCounter::uncount and ::credit); verified writes only what changes.
-- block: ARGV[3] block length (ms), KEYS[1] only; returns the block's end.
-- lift: KEYS[1] only; deletes it and returns 1 when a block stood, else changes nothing.
-- index: KEYS[1] the index of blocks (a sorted set), ARGV[3] member, ARGV[4] block end (Unix
--   ms): listed, ended blocks dropped, the set kept as long as its latest block.
local op = ARGV[1]
local window = tonumber(ARGV[2])
local now = now_ms()
local idx = math.floor(now / window)

if op == 'index' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', KEYS[1], last[2])
  end
  return 0
end

local function load(key)
  local h = redis.call('HMGET', key, 'w', 's', 'v', 'ps', 'pv', 'b', 'g', 'gs', 'gp')
  local c = {
    w = tonumber(h[1]) or idx, s = tonumber(h[2]) or 0, v = tonumber(h[3]) or 0,
    ps = tonumber(h[4]) or 0, pv = tonumber(h[5]) or 0, b = tonumber(h[6]) or 0,
    g = tonumber(h[7]) or 0, gs = tonumber(h[8]) or 0, gp = tonumber(h[9]) or 0,
  }
  if c.w ~= idx then
    if c.w == idx - 1 then
      c.ps, c.pv = c.s, c.v
    else
      c.ps, c.pv = 0, 0
    end
    c.s, c.v, c.w = 0, 0, idx
  end
  return c
end

local elapsed = now - idx * window
local function estimate(c)
  local left = window - elapsed
  return c.s + math.floor(c.ps * left / window), c.v + math.floor(c.pv * left / window)
end

-- PumpCounter::wait_for_budget.
local function wait_for_budget(c, budget)
  local current = math.max(0, c.s - c.v)
  local previous = math.max(0, c.ps - c.pv)
  if current < budget and previous > 0 then
    local room = budget - current
    local t = math.floor(window * (previous - math.min(room, previous)) / previous) + 1
    t = math.min(t, window)
    if t < window then
      return math.max(1, t - elapsed)
    end
  end
  local t = math.floor(window * (current - math.min(budget, current)) / math.max(current, 1)) + 1
  return math.max(1, window - math.min(elapsed, window) + math.min(t, window))
end

-- PumpCounter::roll_slots.
local grace = tonumber(ARGV[6]) or 0
local function roll_slots(c)
  if grace == 0 then
    return
  end
  local slot = math.floor(now / grace)
  if slot ~= c.g then
    if slot == c.g + 1 then
      c.gp = c.gs
    else
      c.gp = 0
    end
    c.gs, c.g = 0, slot
  end
end

-- PumpCounter::judge: sets the block (and returns its end) or returns 0.
local function judge(key, c, volume)
  roll_slots(c)
  local s, v = estimate(c)
  local matured = math.max(0, s - c.gs - c.gp)
  if volume > 0 and matured >= volume and c.b <= now and v * 1000 < matured * tonumber(ARGV[4]) then
    c.b = now + tonumber(ARGV[5])
    redis.call('HSET', key, 'b', c.b, 'bs', s, 'bv', v)
    return c.b
  end
  return 0
end

local function save(key, c)
  redis.call('HSET', key, 'w', c.w, 's', c.s, 'v', c.v, 'ps', c.ps, 'pv', c.pv,
    'g', c.g, 'gs', c.gs, 'gp', c.gp)
  redis.call('PEXPIRE', key, math.max(2 * window, c.b - now))
end

if op == 'send' then
  local counters = {}
  local refused, reason, wait = 0, 0, 0
  for i = 1, #KEYS do
    local c = load(KEYS[i])
    counters[i] = c
    local budget = tonumber(ARGV[5 + 2 * i])
    local s, v = estimate(c)
    local r, w = 0, 0
    if c.b > now then
      r, w = 2, c.b - now
    elseif budget > 0 and s - v >= budget then
      r, w = 1, wait_for_budget(c, budget)
    end
    if r > 0 and (refused == 0 or w > wait) then
      refused, reason, wait = i, r, w
    end
  end
  local out = {refused, reason, wait}
  if refused > 0 and ARGV[3] == '1' then
    return out
  end
  for i = 1, #KEYS do
    local c = counters[i]
    c.s = c.s + 1
    roll_slots(c)
    if grace > 0 then
      c.gs = c.gs + 1
    end
    out[#out + 1] = judge(KEYS[i], c, tonumber(ARGV[6 + 2 * i]))
    save(KEYS[i], c)
  end
  return out
elseif op == 'judge' then
  local out = {}
  for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local c = load(KEYS[i])
      local until_ms = judge(KEYS[i], c, tonumber(ARGV[6 + 2 * i]))
      if until_ms > 0 then
        save(KEYS[i], c)
      end
      out[i] = until_ms
    else
      out[i] = 0
    end
  end
  return out
elseif op == 'verified' then
  -- The hot one (every verified code): five fields read, one written, no TTL change (a key
  -- lives two windows past its last send, longer than any credit can matter).
  for i = 1, #KEYS do
    local h = redis.call('HMGET', KEYS[i], 'w', 's', 'v', 'ps', 'pv')
    local w = tonumber(h[1])
    if w then
      local s, v = tonumber(h[2]) or 0, tonumber(h[3]) or 0
      local ps, pv = tonumber(h[4]) or 0, tonumber(h[5]) or 0
      if w == idx then
        if v < s then
          redis.call('HINCRBY', KEYS[i], 'v', 1)
        elseif pv < ps then
          redis.call('HINCRBY', KEYS[i], 'pv', 1)
        end
      else
        -- PumpCounter::roll, then ::credit (the new window has no sends yet).
        if w == idx - 1 then
          ps, pv = s, v
        else
          ps, pv = 0, 0
        end
        if pv < ps then
          pv = pv + 1
        end
        redis.call('HSET', KEYS[i], 'w', idx, 's', 0, 'v', 0, 'ps', ps, 'pv', pv)
      end
    end
  end
  return 0
elseif op == 'unsend' then
  for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local c = load(KEYS[i])
      if c.s > c.v then
        c.s = c.s - 1
      elseif c.ps > c.pv then
        c.ps = c.ps - 1
      end
      save(KEYS[i], c)
    end
  end
  return 0
elseif op == 'block' then
  local c = load(KEYS[1])
  local s, v = estimate(c)
  c.b = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'b', c.b, 'bs', s, 'bv', v)
  save(KEYS[1], c)
  return c.b
elseif op == 'lift' then
  local b = tonumber(redis.call('HGET', KEYS[1], 'b')) or 0
  if b > now then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
return redis.error_reply('unknown pump operation')

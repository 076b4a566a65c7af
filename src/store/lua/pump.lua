-- SMS-pumping counters (domain::pumping::PumpCounter, the same arithmetic): one hash per scope
-- key: the current window's index w, its sends s and verifications v, the previous window's ps
-- and pv, and a block: its end b (Unix ms) and the counts when it was set, bs and bv.
-- KEYS[1..n] the scopes' hashes
-- ARGV[1] operation: send, unsend, verified, block or lift; ARGV[2] window (ms)
-- send: ARGV[3] enforce (1 or 0), ARGV[4] minimum conversion (per mille), ARGV[5] block length
--   (ms), ARGV[6..] budget, min volume of each key. Returns {refused key index or 0, reason
--   (1 over budget, 2 blocked), wait_ms, then per key 1 when this send blocked it}; with enforce
--   and a refusal nothing is counted and the per-key part is absent.
-- unsend / verified: one send taken back / one verification counted, in each key that exists.
-- block: ARGV[3] block length (ms), KEYS[1] only. lift: deletes KEYS[1]; 1 when a block stood.
local op = ARGV[1]
local window = tonumber(ARGV[2])
local now = now_ms()
local idx = math.floor(now / window)

local function load(key)
  local h = redis.call('HMGET', key, 'w', 's', 'v', 'ps', 'pv', 'b')
  local c = {
    w = tonumber(h[1]) or idx, s = tonumber(h[2]) or 0, v = tonumber(h[3]) or 0,
    ps = tonumber(h[4]) or 0, pv = tonumber(h[5]) or 0, b = tonumber(h[6]) or 0,
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

local function estimate(c)
  local left = window - (now - idx * window)
  return c.s + math.floor(c.ps * left / window), c.v + math.floor(c.pv * left / window)
end

local function save(key, c)
  redis.call('HSET', key, 'w', c.w, 's', c.s, 'v', c.v, 'ps', c.ps, 'pv', c.pv)
  redis.call('PEXPIRE', key, math.max(2 * window, c.b - now))
end

if op == 'send' then
  local counters = {}
  local refused, reason, wait = 0, 0, 0
  for i = 1, #KEYS do
    local c = load(KEYS[i])
    counters[i] = c
    if refused == 0 then
      local budget = tonumber(ARGV[4 + 2 * i])
      local s, v = estimate(c)
      if c.b > now then
        refused, reason, wait = i, 2, c.b - now
      elseif budget > 0 and s - v >= budget then
        refused, reason, wait = i, 1, (idx + 1) * window - now
      end
    end
  end
  local out = {refused, reason, wait}
  if refused > 0 and ARGV[3] == '1' then
    return out
  end
  local min_permille = tonumber(ARGV[4])
  for i = 1, #KEYS do
    local c = counters[i]
    c.s = c.s + 1
    local volume = tonumber(ARGV[5 + 2 * i])
    local s, v = estimate(c)
    local blocked = 0
    if volume > 0 and s >= volume and c.b <= now and v * 1000 < s * min_permille then
      c.b = now + tonumber(ARGV[5])
      redis.call('HSET', KEYS[i], 'b', c.b, 'bs', s, 'bv', v)
      blocked = 1
    end
    save(KEYS[i], c)
    out[#out + 1] = blocked
  end
  return out
elseif op == 'unsend' or op == 'verified' then
  for i = 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      local c = load(KEYS[i])
      if op == 'unsend' then
        c.s = math.max(0, c.s - 1)
      else
        c.v = c.v + 1
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
  redis.call('DEL', KEYS[1])
  if b > now then
    return 1
  end
  return 0
end
return redis.error_reply('unknown pump operation')

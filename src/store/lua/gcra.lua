-- Prepended to the scripts that need it (at build time): the clock and GCRA quota buckets.
-- Quota i of a call uses bucket KEYS[first_key + i - 1] and limit/window (ms) ARGV[first_arg +
-- 2i - 2] / ARGV[first_arg + 2i - 1]. A bucket holds its theoretical arrival time (ms); an event
-- at `now` fits when max(tat, now) + window / limit - now <= window.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function quota_args(first_arg, i)
  local limit = tonumber(ARGV[first_arg + 2 * i - 2])
  local window = tonumber(ARGV[first_arg + 2 * i - 1])
  return limit, window, math.max(1, math.floor(window / math.max(limit, 1)))
end

-- Checks quotas 1..n without charging them. Returns the new arrival times when every quota
-- admits the event, else nil and {index, wait_ms} of the quota that waits longest.
local function gcra_check(first_key, first_arg, n, now)
  local tats = {}
  local worst_i, worst = 0, -1
  for i = 1, n do
    local _, window, interval = quota_args(first_arg, i)
    local tat = tonumber(redis.call('GET', KEYS[first_key + i - 1])) or 0
    local new_tat = math.max(tat, now) + interval
    if new_tat - now > window then
      if new_tat - now - window > worst then
        worst_i, worst = i, new_tat - now - window
      end
    else
      tats[i] = new_tat
    end
  end
  if worst_i > 0 then
    return nil, {worst_i, worst}
  end
  return tats, nil
end

-- Charges quotas from..to with the times gcra_check returned; appends remaining, reset_ms of
-- each to `out` when given.
local function gcra_charge(first_key, first_arg, from, to, now, tats, out)
  for i = from, to do
    local limit, window, interval = quota_args(first_arg, i)
    redis.call('SET', KEYS[first_key + i - 1], tats[i], 'PX', tats[i] - now)
    if out then
      out[#out + 1] = math.min(limit, math.floor((window - (tats[i] - now)) / interval))
      out[#out + 1] = tats[i] - now
    end
  end
end

-- Checks quotas 1..n and, when every one admits the event, charges them all: {0, remaining,
-- reset_ms, …per quota}; else {2, quota index, wait_ms} and nothing changes.
local function gcra_take(first_key, first_arg, n, now)
  local tats, refused = gcra_check(first_key, first_arg, n, now)
  if refused then
    return {2, refused[1], refused[2]}
  end
  local out = {0}
  gcra_charge(first_key, first_arg, 1, n, now, tats, out)
  return out
end

-- verify_code and, on a right code, put_session in one script, where one node holds every key
-- (standalone or Sentinel): a login whose user is known (or proposed) before the code check has
-- its session recorded with the check, one round trip instead of two. verify_main and
-- session_main are verify_code.lua and put_session.lua, each wrapped as a function of its own
-- KEYS and ARGV (at build time).
-- KEYS[1..n] verify_code's keys, then put_session's two
-- ARGV[1..m] verify_code's arguments, then put_session's four
-- Returns verify_code's reply; for a right code {0, mark} followed by put_session's reply. A
-- put that fails (a key of the wrong type) is logged by Redis and answers {0, mark} alone: the
-- code's spend stands (Redis keeps a failed script's earlier writes) and the caller records
-- the session itself, as in two steps.
local n, m = #KEYS - 2, #ARGV - 4
local vk, va = {}, {}
for i = 1, n do
  vk[i] = KEYS[i]
end
for i = 1, m do
  va[i] = ARGV[i]
end
local out = verify_main(vk, va)
if out[1] ~= 0 then
  return out
end
local ok, put = pcall(session_main, {KEYS[n + 1], KEYS[n + 2]},
  {ARGV[m + 1], ARGV[m + 2], ARGV[m + 3], ARGV[m + 4]})
if not ok then
  local why = type(put) == 'table' and put.err or tostring(put)
  redis.log(redis.LOG_WARNING, 'otpgate: a session was not recorded with its code check: ' .. tostring(why))
  return out
end
for i = 1, #put do
  out[#out + 1] = put[i]
end
return out

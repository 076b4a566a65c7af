-- put_session and then a pump `verified` credit in one script, where one node holds every key
-- (standalone or Sentinel): the login's session is recorded and its verified code credited to
-- the pumping scopes its send was counted in, in one round trip. session_main and pump_main are
-- put_session.lua and pump.lua, each wrapped as a function of its own KEYS and ARGV (at build
-- time).
-- KEYS[1..2] put_session's keys, then the pump scopes' hashes
-- ARGV[1..4] put_session's arguments, ARGV[5] the pump window (ms)
-- Returns put_session's reply; the credit is made only when the session was recorded (not for a
-- blocked user). A credit that fails (a key of the wrong type) is logged by Redis and the
-- session stands, as in two steps: Redis keeps a failed script's earlier writes, so an error
-- here would leave a recorded session behind a 503.
local sk, pk = {KEYS[1], KEYS[2]}, {}
for i = 3, #KEYS do
  pk[#pk + 1] = KEYS[i]
end
local put = session_main(sk, {ARGV[1], ARGV[2], ARGV[3], ARGV[4]})
if put[1] == 0 and #pk > 0 then
  local ok, err = pcall(pump_main, pk, {'verified', ARGV[5]})
  if not ok then
    redis.log(redis.LOG_WARNING, 'otpgate: a verified code was not credited to the pumping defence: ' .. tostring(err))
  end
end
return put

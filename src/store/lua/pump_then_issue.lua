-- A pump `send` and then issue_code in one script, where one node holds every key (standalone or
-- Sentinel): the two steps AuthService::login takes on a Cluster, in one round trip. pump_main
-- and issue_main are pump.lua and issue_code.lua, each wrapped as a function of its own KEYS
-- and ARGV (at build time).
-- KEYS: issue_code's keys, then the pump scopes' hashes
-- ARGV[1] how many of KEYS are issue_code's, ARGV[2] how many arguments issue_code has, then
-- issue_code's arguments, then the pump send's (from its operation name on)
-- Returns {n, the send's reply (n integers)…, issue_code's reply…}. When the send is refused in
-- enforce mode issue_code does not run (its part is absent: no code stored, no quota charged);
-- when issue_code refuses (cooldown or quota) the send is taken back.
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local ik, pk, ia, pa = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then
    ik[#ik + 1] = KEYS[i]
  else
    pk[#pk + 1] = KEYS[i]
  end
end
for i = 3, #ARGV do
  if i - 2 <= na then
    ia[#ia + 1] = ARGV[i]
  else
    pa[#pa + 1] = ARGV[i]
  end
end
local pumped = pump_main(pk, pa)
local out = {#pumped}
for i = 1, #pumped do
  out[#out + 1] = pumped[i]
end
if pumped[1] > 0 and pa[3] == '1' then
  return out
end
local issued = issue_main(ik, ia)
if issued[1] == 1 or issued[1] == 2 then
  pump_main(pk, {'unsend', pa[2]})
end
for i = 1, #issued do
  out[#out + 1] = issued[i]
end
return out

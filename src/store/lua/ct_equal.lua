-- Constant-time string comparison: every byte is looked at whatever the first difference.
local function ct_equal(a, b)
  local diff = 0
  if #a ~= #b then
    diff = 1
  end
  for i = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i) or 0))
  end
  return diff == 0
end

-- The limits of an off-ledger authorisation, checked and counted before the client is asked
-- (check 9, seed 004), or a later adjustment of what was counted (the client's partial
-- approval or decline, a stand-in that decides by itself). Off-ledger only: an on-ledger
-- decision checks and counts its limits inside authorize.lua.
--
-- KEYS[1]  account state hash
-- ARGV     gen mode(check|adjust) amount count n_limits, then per limit:
--          key previous amount_max count_max   (key '': a per-transaction limit, not counted;
--          -1: no cap)
--          check: every cap is checked first (amount before count, as authorize.lua), then
--          each counter adds amount and count (a counter of an earlier period is dropped);
--          adjust: each counter still cached adds amount and count (which may be negative);
--          one of an earlier period is gone and stays gone
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'MISS'} | {'AMOUNT'} | {'COUNT'} | {'OK'}

local state = KEYS[1]
local f = redis.call('HMGET', state, 'g', 'r')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE then
  return {'MISS'}
end
local mode = ARGV[2]
local amount, uses = tonumber(ARGV[3]), tonumber(ARGV[4])
local limits = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  limits[#limits + 1] = {key = ARGV[i], previous = ARGV[i + 1],
    amount_max = tonumber(ARGV[i + 2]), count_max = tonumber(ARGV[i + 3])}
  i = i + 4
end

local function used(key)
  if key == '' then return 0, 0 end
  local v = redis.call('HMGET', state, 'ua:' .. key, 'uc:' .. key)
  return tonumber(v[1] or '0'), tonumber(v[2] or '0')
end

if mode == 'check' then
  for _, limit in ipairs(limits) do
    local spent = used(limit.key)
    if limit.amount_max >= 0 and spent + amount > limit.amount_max then return {'AMOUNT'} end
  end
  for _, limit in ipairs(limits) do
    if limit.key ~= '' and limit.count_max >= 0 then
      local _, count = used(limit.key)
      if count + uses > limit.count_max then return {'COUNT'} end
    end
  end
end

for _, limit in ipairs(limits) do
  if limit.key ~= '' then
    if mode == 'check' or redis.call('HEXISTS', state, 'ua:' .. limit.key) == 1 then
      -- Both fields, always: a counter is cached as a pair.
      redis.call('HINCRBY', state, 'ua:' .. limit.key, amount)
      redis.call('HINCRBY', state, 'uc:' .. limit.key, uses)
    end
    if mode == 'check' and limit.previous ~= '' and limit.previous ~= limit.key then
      redis.call('HDEL', state, 'ua:' .. limit.previous, 'uc:' .. limit.previous)
    end
  end
end
return {'OK'}

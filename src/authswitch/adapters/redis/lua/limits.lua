-- The limits and free-use fees of an off-ledger authorisation, checked and counted before
-- the client is asked (check 9 and seed 004's fees, as authorize.lua does them on-ledger), or
-- a later adjustment of what was counted (the client's partial approval or decline, a
-- stand-in that decides by itself, a reversal). Off-ledger only: an on-ledger decision does
-- all of this inside authorize.lua.
--
-- KEYS[1]  account state hash
-- ARGV     gen mode(check|adjust|decline) amount uses fixed_fee decline_fee free_delta
--          n_limits, then per limit: key previous amount_max count_max
--            (key '': a per-transaction limit, not counted; -1: no cap)
--          n_frees, then per free-use fee: key previous free_uses fee
-- check:   fee = fixed_fee + every free-use fee whose free uses are used up; every cap is
--          checked against amount + fee (amount caps before count caps, as authorize.lua).
--          Over a cap: a decline fee counts itself and one use (as authorize.lua's posted
--          decline fee), nothing else. Within: each limit counts amount + fee and one use,
--          each free-use counter one use. A counter of an earlier period is dropped.
-- adjust:  each limit counter still cached adds amount and uses, each free-use counter
--          free_delta uses (negative: taken back); one of an earlier period stays gone.
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'MISS'} | {'AMOUNT', fee} | {'COUNT', fee} | {'OK', fee, charged free index...}

local state = KEYS[1]
local f = redis.call('HMGET', state, 'g', 'r')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE then
  return {'MISS'}
end
local mode = ARGV[2]
local amount, uses = tonumber(ARGV[3]), tonumber(ARGV[4])
local fixed_fee, decline_fee, free_delta = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local limits, frees = {}, {}
local i = 9
for _ = 1, tonumber(ARGV[8]) do
  limits[#limits + 1] = {key = ARGV[i], previous = ARGV[i + 1],
    amount_max = tonumber(ARGV[i + 2]), count_max = tonumber(ARGV[i + 3])}
  i = i + 4
end
local n_frees = tonumber(ARGV[i])
i = i + 1
for _ = 1, n_frees do
  frees[#frees + 1] = {key = ARGV[i], previous = ARGV[i + 1],
    free_uses = tonumber(ARGV[i + 2]), fee = tonumber(ARGV[i + 3])}
  i = i + 4
end

local function used(key)
  if key == '' then return 0, 0 end
  local v = redis.call('HMGET', state, 'ua:' .. key, 'uc:' .. key)
  return tonumber(v[1] or '0'), tonumber(v[2] or '0')
end

local function count(counter, add_amount, add_uses, create)
  if counter.key == '' then return end
  if create or redis.call('HEXISTS', state, 'ua:' .. counter.key) == 1 then
    -- Both fields, always: a counter is cached as a pair.
    redis.call('HINCRBY', state, 'ua:' .. counter.key, add_amount)
    redis.call('HINCRBY', state, 'uc:' .. counter.key, add_uses)
  end
  if create and counter.previous ~= '' and counter.previous ~= counter.key then
    redis.call('HDEL', state, 'ua:' .. counter.previous, 'uc:' .. counter.previous)
  end
end

if mode == 'decline' then
  -- A decline before the client is asked (check 8) with a decline fee: as authorize.lua
  -- counts a posted decline fee, the fee and one use on every limit.
  for _, limit in ipairs(limits) do count(limit, decline_fee, 1, true) end
  return {'OK', 0}
end
if mode == 'adjust' then
  for _, limit in ipairs(limits) do count(limit, amount, uses, false) end
  if free_delta ~= 0 then
    for _, free in ipairs(frees) do count(free, 0, free_delta, false) end
  end
  return {'OK', 0}
end

local fee, charged = fixed_fee, {}
for index, free in ipairs(frees) do
  local _, free_used = used(free.key)
  if free_used >= free.free_uses then
    fee = fee + free.fee
    charged[#charged + 1] = index - 1
  end
end
local total = amount + fee
local over = nil
for _, limit in ipairs(limits) do
  local spent = used(limit.key)
  if limit.amount_max >= 0 and spent + total > limit.amount_max then over = 'AMOUNT' break end
end
if not over then
  for _, limit in ipairs(limits) do
    if limit.key ~= '' and limit.count_max >= 0 then
      local _, counted = used(limit.key)
      if counted + uses > limit.count_max then over = 'COUNT' break end
    end
  end
end
if over then
  if decline_fee > 0 then
    for _, limit in ipairs(limits) do count(limit, decline_fee, 1, true) end
  end
  return {over, fee}
end
for _, limit in ipairs(limits) do count(limit, total, uses, true) end
for _, free in ipairs(frees) do count(free, 0, 1, true) end
local reply = {'OK', fee}
for _, index in ipairs(charged) do reply[#reply + 1] = index end
return reply

-- An account-funding credit (original credit transaction) as one atomic step: the card's
-- status, the product's verdict, the credit limits, then the credit and the idempotency
-- marker. Mirrors authswitch.domain.credits.credit_decision. Validates first, writes last;
-- time is never read here (counter names arrive computed).
--
-- KEYS[1]  account state hash
-- KEYS[2]  idempotency marker
-- KEYS[3]  in-flight marks (see begin_load.lua)
-- ARGV     1 gen  2 card  3 asset  4 amount  5 product_reason  6 marker_value
--          7 marker_ttl_s  8 mark (this operation's in-flight mark, as authorize.lua's)
--          9 n_limits, then per limit: key previous amount_max count_max
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'MISS'} (also while the state is being reloaded) | {'MISSCARD'}
--          | {'DUP', marker_value}
--          {'OK', reason, epoch, actual, held, has_balance}

local APPROVED, TRANSACTION_NOT_PERMITTED = 1, 25
-- AMOUNT_LIMIT_EXCEEDED, COUNT_LIMIT_EXCEEDED: limits_lib.lua

local state, marker = KEYS[1], KEYS[2]
local card, asset, amount = ARGV[2], ARGV[3], tonumber(ARGV[4])
local product_reason = tonumber(ARGV[5])
local mark = ARGV[8]
local limits = {}
local i = 9
for _ = 1, tonumber(ARGV[i]) do
  limits[#limits + 1] = {key = ARGV[i + 1], previous = ARGV[i + 2],
    amount_max = tonumber(ARGV[i + 3]), count_max = tonumber(ARGV[i + 4])}
  i = i + 4
end

local f = redis.call('HMGET', state, 'g', 'e', 'c:' .. card, 'a:' .. asset, 'h:' .. asset, 'r',
  'L')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[6] or '') ~= NODE then
  return {'MISS'}
end
if f[7] and mark ~= '' then return {'MISS'} end
if not f[3] then return {'MISSCARD'} end
local prior = redis.call('GET', marker)
if prior then return {'DUP', prior} end
local has_balance = f[4] and 1 or 0
local actual, held = tonumber(f[4] or '0'), tonumber(f[5] or '0')

local reason = tonumber(f[3])
if reason == 0 then reason = product_reason end
if reason == 0 and has_balance == 0 then reason = TRANSACTION_NOT_PERMITTED end
if reason == 0 then reason = over_limits(state, limits, amount) end

if reason == 0 then
  reason = APPROVED
  actual = redis.call('HINCRBY', state, 'a:' .. asset, amount)
  for _, limit in ipairs(limits) do
    if limit.key ~= '' then
      redis.call('HINCRBY', state, 'ua:' .. limit.key, amount)
      redis.call('HINCRBY', state, 'uc:' .. limit.key, 1)
      if limit.previous ~= '' and limit.previous ~= limit.key then
        redis.call('HDEL', state, 'ua:' .. limit.previous, 'uc:' .. limit.previous)
      end
    end
  end
end
redis.call('SET', marker, ARGV[6], 'EX', ARGV[7])
if mark ~= '' then redis.call('ZADD', KEYS[3], redis.call('TIME')[1], mark) end
return {'OK', reason, f[2], actual, held, has_balance}

-- Checks 3 to 10 of one authorisation, its fees, limits and reservation, as one atomic step.
-- Mirrors authswitch.domain.authorization.decide (a test runs both on the same inputs).
-- Validates everything first and writes only at the end: Lua scripts have no rollback.
-- Time is never read here; periods, expiry and counter names arrive already computed.
--
-- KEYS[1]  account state hash   <prefix>:{<account>}:s
-- KEYS[2]  idempotency marker    <prefix>:{<account>}:m:<source>:<message id>
-- KEYS[3]  in-flight marks       <prefix>:{<account>}:f (see begin_load.lua)
-- ARGV     1 gen  2 card  3 asset  4 amount  5 fixed_fee  6 partial(0|1)
--          7 mode: 0 financial, 1 zero-value, 2 core checks only (off-ledger: no funds, no
--            limits, nothing held or counted; APPROVED means every check passed)
--          8 expiry_reason  9 pin_mode  10 pvv  11 new_pvv  12 cvv2_reason  13 product_reason
--          14 marker_value  15 marker_ttl_s  16 decline_fee
--          17 mark: this operation's in-flight mark, added to KEYS[3] with the step, so
--            that a reload in any process waits for its write; refused (MISS) while a
--            reload is under way. '': a step of an operation marked already (neither)
--          18 n_limits, then per limit: key previous amount_max count_max   (-1: no cap)
--          then n_free, then per free-use fee: key previous free_uses fee
--          then, optional (absent: none), n_velocity, then per velocity rule (spend
--          controls' rolling windows, service/controls.py): approvals_prefix
--          declines_prefix first_bucket last_bucket approvals_max amount_max declines_max
--          Counters live in the state hash as ua:<key> (amount) and uc:<key> (count); a
--          velocity bucket is the counter <prefix><bucket number>.
-- NODE     (prepended by cache.py) the data set this runs on: '' on one server; on a
--          cluster the node's replication id, which state written on another data set
--          does not carry (a promoted replica, a migrated slot): such state is a MISS
-- Returns  {'MISS'}                      state not loaded (or loaded by an older generation,
--                                        or on another data set, or being reloaded)
--          {'MISSCARD'}                  the card's fields are not loaded
--          {'DUP', marker_value}         the message id was seen before
--          {'OK', reason, approved, fee, actual, held, epoch, tries, tries_changed,
--           blocked_now, pin_changed, has_balance, fee_mode}, and with velocity rules two
--           more: the rule (1-based) that declined 61/65, and the rule whose decline count
--           blocked the card (the card is then BLOCKED here); 0 for none

-- Reason numbers of authswitch.domain.codes.Reason, FeeMode of domain.authorization.
local APPROVED, PARTIALLY_APPROVED = 1, 2
local PIN_TRIES_EXCEEDED, INCORRECT_PIN = 22, 23
local TRANSACTION_NOT_PERMITTED = 25
-- AMOUNT_LIMIT_EXCEEDED, COUNT_LIMIT_EXCEEDED: limits_lib.lua
local INSUFFICIENT_FUNDS, NO_BALANCE_IN_ASSET = 28, 29
local CARD_BLOCKED, FIRST_COUNTED_DECLINE = 16, 20
local FEE_HELD, FEE_POSTED, FEE_NOT_APPLIED = 1, 2, 3

local state, marker = KEYS[1], KEYS[2]
local gen = tonumber(ARGV[1])
local card, asset = ARGV[2], ARGV[3]
local amount, fixed_fee = tonumber(ARGV[4]), tonumber(ARGV[5])
local partial, zero_value, checks_only = ARGV[6] == '1', ARGV[7] ~= '0', ARGV[7] == '2'
local expiry_reason = tonumber(ARGV[8])
local pin_mode, pvv, new_pvv = ARGV[9], ARGV[10], ARGV[11]
local cvv2_reason, product_reason = tonumber(ARGV[12]), tonumber(ARGV[13])
local decline_fee = tonumber(ARGV[16])
local mark = ARGV[17]

local limits, frees = {}, {}
local i = 18
for _ = 1, tonumber(ARGV[i]) do
  limits[#limits + 1] = {key = ARGV[i + 1], previous = ARGV[i + 2],
    amount_max = tonumber(ARGV[i + 3]), count_max = tonumber(ARGV[i + 4])}
  i = i + 4
end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do
  frees[#frees + 1] = {key = ARGV[i + 1], previous = ARGV[i + 2],
    free_uses = tonumber(ARGV[i + 3]), fee = tonumber(ARGV[i + 4])}
  i = i + 4
end
local velocity = {}
i = i + 1
for _ = 1, tonumber(ARGV[i] or '0') do
  velocity[#velocity + 1] = {prefix = ARGV[i + 1], dprefix = ARGV[i + 2],
    first = tonumber(ARGV[i + 3]), last = tonumber(ARGV[i + 4]),
    approvals_max = tonumber(ARGV[i + 5]), amount_max = tonumber(ARGV[i + 6]),
    declines_max = tonumber(ARGV[i + 7])}
  i = i + 7
end

local f = redis.call('HMGET', state, 'g', 'e', 'c:' .. card, 't:' .. card, 'm:' .. card,
  'p:' .. card, 'a:' .. asset, 'h:' .. asset, 'r', 'L')
if not f[1] or tonumber(f[1]) < gen or (f[9] or '') ~= NODE then return {'MISS'} end
if f[10] and mark ~= '' then return {'MISS'} end
if not f[3] then return {'MISSCARD'} end
local prior = redis.call('GET', marker)
if prior then return {'DUP', prior} end

local epoch = f[2]
local status_reason = tonumber(f[3])
local tries, tries_max = tonumber(f[4]), tonumber(f[5])
local stored_pvv = f[6] or ''
local has_balance = f[7] and 1 or 0
local actual, held = tonumber(f[7] or '0'), tonumber(f[8] or '0')


local reason, approved, blocked_now, pin_changed = 0, 0, 0, 0
local new_tries = tries

if status_reason ~= 0 then
  reason = status_reason
elseif expiry_reason ~= 0 then
  reason = expiry_reason
end
if reason == 0 and pin_mode ~= '' then
  if pin_mode ~= 'unblock' and tries >= tries_max then
    reason = PIN_TRIES_EXCEEDED
  elseif stored_pvv == '' or stored_pvv ~= pvv then
    new_tries = math.min(tries + 1, tries_max)
    if new_tries >= tries_max and tries < tries_max then blocked_now = 1 end
    reason = INCORRECT_PIN
  else
    new_tries = 0
    if pin_mode == 'change' then pin_changed = 1 end
  end
end
if reason == 0 and cvv2_reason ~= 0 then reason = cvv2_reason end
if reason == 0 and product_reason ~= 0 then reason = product_reason end

if checks_only then
  if reason == 0 then reason = APPROVED end
  if new_tries ~= tries then redis.call('HSET', state, 't:' .. card, new_tries) end
  if pin_changed == 1 then redis.call('HSET', state, 'p:' .. card, new_pvv) end
  redis.call('SET', marker, ARGV[14], 'EX', ARGV[15])
  if mark ~= '' then redis.call('ZADD', KEYS[3], redis.call('TIME')[1], mark) end
  local changed = 0
  if new_tries ~= tries then changed = 1 end
  return {'OK', reason, 0, 0, actual, held, epoch, new_tries, changed, blocked_now,
    pin_changed, has_balance, 0}
end

local fee = fixed_fee
for _, free in ipairs(frees) do
  local _, uses = counted(state, free.key)
  if uses >= free.free_uses then fee = fee + free.fee end
end
if reason == 0 then reason = over_limits(state, limits, amount + fee) end
-- Velocity: what the rolling window's buckets hold (amount, count).
local function window(prefix, first, last)
  local names = {}
  for b = first, last do
    names[#names + 1] = 'ua:' .. prefix .. b
    names[#names + 1] = 'uc:' .. prefix .. b
  end
  local v = redis.call('HMGET', state, unpack(names))
  local sum, n = 0, 0
  for k = 1, #v, 2 do
    sum = sum + tonumber(v[k] or '0')
    n = n + tonumber(v[k + 1] or '0')
  end
  return sum, n
end
local velocity_rule, velocity_blocked = 0, 0
if reason == 0 and not zero_value then
  for n, v in ipairs(velocity) do
    if v.amount_max >= 0 or v.approvals_max >= 0 then
      local spent, uses = window(v.prefix, v.first, v.last)
      if v.amount_max >= 0 and spent + amount + fee > v.amount_max then
        reason, velocity_rule = AMOUNT_LIMIT_EXCEEDED, n
        break
      end
      if v.approvals_max >= 0 and uses + 1 > v.approvals_max then
        reason, velocity_rule = COUNT_LIMIT_EXCEEDED, n
        break
      end
    end
  end
end
if reason == 0 and has_balance == 0 then reason = NO_BALANCE_IN_ASSET end
if reason == 0 then
  local available = actual - held
  if zero_value then
    reason = APPROVED
  elseif amount + fee <= available then
    reason, approved = APPROVED, amount
  elseif partial and available - fee > 0 then
    reason, approved = PARTIALLY_APPROVED, available - fee
  else
    reason = INSUFFICIENT_FUNDS
  end
end

-- Writes, all validation done.
if new_tries ~= tries then redis.call('HSET', state, 't:' .. card, new_tries) end
if pin_changed == 1 then redis.call('HSET', state, 'p:' .. card, new_pvv) end

local function count(counter, add_amount, add_uses)
  if counter.key == '' then return end
  -- Both fields, always: a counter is cached as a pair, and apply.lua adjusts only those.
  redis.call('HINCRBY', state, 'ua:' .. counter.key, add_amount)
  redis.call('HINCRBY', state, 'uc:' .. counter.key, add_uses)
  if counter.previous ~= '' and counter.previous ~= counter.key then
    redis.call('HDEL', state, 'ua:' .. counter.previous, 'uc:' .. counter.previous)
  end
end

local fee_mode, charged = 0, 0
if (reason == APPROVED or reason == PARTIALLY_APPROVED) and not zero_value then
  held = redis.call('HINCRBY', state, 'h:' .. asset, approved + fee)
  charged = fee
  if fee > 0 then fee_mode = FEE_HELD end
  for _, limit in ipairs(limits) do count(limit, approved + fee, 1) end
  for _, free in ipairs(frees) do count(free, 0, 1) end
else
  local posting = 0
  if reason == APPROVED then posting = fee end
  if reason == TRANSACTION_NOT_PERMITTED or reason == AMOUNT_LIMIT_EXCEEDED
      or reason == COUNT_LIMIT_EXCEEDED or reason == INSUFFICIENT_FUNDS then
    posting = decline_fee
  end
  if posting > 0 then
    if has_balance == 1 and posting <= actual - held then
      actual = redis.call('HINCRBY', state, 'a:' .. asset, -posting)
      charged, fee_mode = posting, FEE_POSTED
    else
      fee_mode = FEE_NOT_APPLIED
    end
    for _, limit in ipairs(limits) do count(limit, charged, 1) end
  end
  if reason == APPROVED then
    if posting == 0 then
      for _, limit in ipairs(limits) do count(limit, 0, 1) end
    end
    for _, free in ipairs(frees) do count(free, 0, 1) end
  end
end
if #velocity > 0 then
  local function bump(prefix, v, add_amount)
    redis.call('HINCRBY', state, 'ua:' .. prefix .. v.last, add_amount)
    redis.call('HINCRBY', state, 'uc:' .. prefix .. v.last, 1)
    redis.call('HDEL', state, 'ua:' .. prefix .. (v.first - 1), 'uc:' .. prefix .. (v.first - 1))
  end
  if (reason == APPROVED or reason == PARTIALLY_APPROVED) and not zero_value then
    for _, v in ipairs(velocity) do bump(v.prefix, v, approved + charged) end
  elseif reason >= FIRST_COUNTED_DECLINE and reason <= NO_BALANCE_IN_ASSET then
    -- A decline after the card's status was found good counts; the card is blocked
    -- by the one that exceeds a rule's maximum.
    for n, v in ipairs(velocity) do
      if v.declines_max >= 0 then
        local _, declines = window(v.dprefix, v.first, v.last)
        bump(v.dprefix, v, 0)
        if declines + 1 > v.declines_max and velocity_blocked == 0 then
          redis.call('HSET', state, 'c:' .. card, CARD_BLOCKED)
          velocity_blocked = n
        end
      end
    end
  end
end
redis.call('SET', marker, ARGV[14], 'EX', ARGV[15])
if mark ~= '' then redis.call('ZADD', KEYS[3], redis.call('TIME')[1], mark) end
local tries_changed = 0
if new_tries ~= tries then tries_changed = 1 end
if #velocity > 0 then
  return {'OK', reason, approved, charged, actual, held, epoch, new_tries, tries_changed,
    blocked_now, pin_changed, has_balance, fee_mode, velocity_rule, velocity_blocked}
end
return {'OK', reason, approved, charged, actual, held, epoch, new_tries, tries_changed,
  blocked_now, pin_changed, has_balance, fee_mode}

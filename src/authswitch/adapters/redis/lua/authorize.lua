-- Checks 3 to 10 of one authorisation and its reservation, as one atomic step.
-- Mirrors authswitch.domain.authorization.decide (a test runs both on the same inputs).
-- Validates everything first and writes only at the end: Lua scripts have no rollback.
-- Time is never read here; periods and expiry arrive already computed.
--
-- KEYS[1]  account state hash   <prefix>:{<account>}:s
-- KEYS[2]  idempotency marker    <prefix>:{<account>}:m:<source>:<message id>
-- ARGV     gen card asset amount fee partial(0|1) zero_value(0|1) expiry_reason pin_mode
--          pvv new_pvv cvv2_reason product_reason marker_value marker_ttl_s
-- Returns  {'MISS'}                      state not loaded (or loaded by an older generation)
--          {'MISSCARD'}                  the card's fields are not loaded
--          {'DUP', marker_value}         the message id was seen before
--          {'OK', reason, approved, fee, actual, held, epoch, tries, tries_changed,
--           blocked_now, pin_changed, has_balance}

-- Reason numbers of authswitch.domain.codes.Reason.
local APPROVED, PARTIALLY_APPROVED = 1, 2
local PIN_TRIES_EXCEEDED, INCORRECT_PIN = 22, 23
local INSUFFICIENT_FUNDS, NO_BALANCE_IN_ASSET = 28, 29

local state, marker = KEYS[1], KEYS[2]
local gen = tonumber(ARGV[1])
local card, asset = ARGV[2], ARGV[3]
local amount, fee = tonumber(ARGV[4]), tonumber(ARGV[5])
local partial, zero_value = ARGV[6] == '1', ARGV[7] == '1'
local expiry_reason = tonumber(ARGV[8])
local pin_mode, pvv, new_pvv = ARGV[9], ARGV[10], ARGV[11]
local cvv2_reason, product_reason = tonumber(ARGV[12]), tonumber(ARGV[13])

local f = redis.call('HMGET', state, 'g', 'e', 'c:' .. card, 't:' .. card, 'm:' .. card,
  'p:' .. card, 'a:' .. asset, 'h:' .. asset)
if not f[1] or tonumber(f[1]) < gen then return {'MISS'} end
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
else
  if pin_mode ~= '' then
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
  if reason == 0 then
    if cvv2_reason ~= 0 then
      reason = cvv2_reason
    elseif product_reason ~= 0 then
      reason = product_reason
    elseif has_balance == 0 then
      reason = NO_BALANCE_IN_ASSET
    else
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
  end
end

-- Writes, all validation done.
if new_tries ~= tries then redis.call('HSET', state, 't:' .. card, new_tries) end
if pin_changed == 1 then redis.call('HSET', state, 'p:' .. card, new_pvv) end
local hold = 0
if (reason == APPROVED or reason == PARTIALLY_APPROVED) and not zero_value then
  hold = approved + fee
end
if hold > 0 then held = redis.call('HINCRBY', state, 'h:' .. asset, hold) end
redis.call('SET', marker, ARGV[14], 'EX', ARGV[15])
local charged_fee = 0
if hold > 0 then charged_fee = fee end
local tries_changed = 0
if new_tries ~= tries then tries_changed = 1 end
return {'OK', reason, approved, charged_fee, actual, held, epoch, new_tries, tries_changed,
  blocked_now, pin_changed, has_balance}

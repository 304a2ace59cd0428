-- A balance change other than an authorisation (credit, debit, advice, reversal, clearing,
-- refund, age-off) as one atomic step: checks the funds when asked, then writes.
--
-- KEYS[1]  account state hash
-- KEYS[2]  in-flight marks (see begin_load.lua)
-- KEYS[3]  idempotency marker (optional)
-- ARGV     gen asset actual_delta held_delta requires_funds(0|1) marker_value marker_ttl_s
--          mark (this operation's in-flight mark, as authorize.lua's; '': none)
--          n_counters, then per counter: key amount_delta count_delta (adjusted only if the
--          counter is cached: a counter of an earlier period is gone and stays gone)
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'MISS'} (also while the state is being reloaded) | {'DUP', marker_value}
--          | {'NOBALANCE'}
--          {'NSF', actual, held}             refused: available would go below zero
--          {'OK', epoch, actual, held}       the balance after the change

local state, marks, marker = KEYS[1], KEYS[2], KEYS[3]
local gen = tonumber(ARGV[1])
local asset = ARGV[2]
local actual_delta, held_delta = tonumber(ARGV[3]), tonumber(ARGV[4])
local mark = ARGV[8]

local f = redis.call('HMGET', state, 'g', 'e', 'a:' .. asset, 'h:' .. asset, 'r', 'L')
if not f[1] or tonumber(f[1]) < gen or (f[5] or '') ~= NODE then return {'MISS'} end
if f[6] and mark ~= '' then return {'MISS'} end
if marker ~= nil and marker ~= '' then
  local prior = redis.call('GET', marker)
  if prior then return {'DUP', prior} end
end
if not f[3] then return {'NOBALANCE'} end
local actual, held = tonumber(f[3]), tonumber(f[4] or '0')
if ARGV[5] == '1' and actual_delta - held_delta < 0
    and (actual + actual_delta) - (held + held_delta) < 0 then
  return {'NSF', actual, held}
end
if actual_delta ~= 0 then actual = redis.call('HINCRBY', state, 'a:' .. asset, actual_delta) end
if held_delta ~= 0 then held = redis.call('HINCRBY', state, 'h:' .. asset, held_delta) end
local i = 10
for _ = 1, tonumber(ARGV[9] or '0') do
  local key = ARGV[i]
  if redis.call('HEXISTS', state, 'ua:' .. key) == 1 then
    redis.call('HINCRBY', state, 'ua:' .. key, tonumber(ARGV[i + 1]))
    redis.call('HINCRBY', state, 'uc:' .. key, tonumber(ARGV[i + 2]))
  end
  i = i + 3
end
if marker ~= nil and marker ~= '' then redis.call('SET', marker, ARGV[6], 'EX', ARGV[7]) end
if mark ~= '' then redis.call('ZADD', marks, redis.call('TIME')[1], mark) end
return {'OK', f[2], actual, held}

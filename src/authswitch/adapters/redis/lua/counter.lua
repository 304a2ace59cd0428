-- Adds to one counter of an account if it stays within its cap (a stand-in's daily limit).
--
-- KEYS[1]  account state hash
-- ARGV     gen key previous amount cap
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'MISS'} | {'OVER', used} | {'OK', used_after}

local state = KEYS[1]
local f = redis.call('HMGET', state, 'g', 'r')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE then
  return {'MISS'}
end
local key, previous = ARGV[2], ARGV[3]
local amount, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local used = tonumber(redis.call('HGET', state, 'ua:' .. key) or '0')
if used + amount > cap then return {'OVER', used} end
used = redis.call('HINCRBY', state, 'ua:' .. key, amount)
redis.call('HINCRBY', state, 'uc:' .. key, 1)
if previous ~= '' and previous ~= key then
  redis.call('HDEL', state, 'ua:' .. previous, 'uc:' .. previous)
end
return {'OK', used}

-- Adds one card's fields to an account's cached state, if that state is loaded.
--
-- KEYS[1]  account state hash
-- ARGV     gen field value [field value ...]
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  1 when written, 0 when the account state is not loaded (load it first)

local f = redis.call('HMGET', KEYS[1], 'g', 'r')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1

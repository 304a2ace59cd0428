-- Reads an account's cached state, if it is loaded (for reconciliation).
--
-- KEYS[1]  account state hash
-- ARGV     gen
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  the hash as field, value, ... ; empty when not loaded (or by an older generation,
--          or on another data set)

local f = redis.call('HMGET', KEYS[1], 'g', 'r')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE then return {} end
return redis.call('HGETALL', KEYS[1])

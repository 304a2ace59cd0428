-- Undoes (or applies) a change to one balance, only if the state is still the one the
-- change was made in: after a reload the state already reflects Postgres, the truth.
--
-- KEYS[1]  account state hash
-- ARGV     epoch asset actual_delta held_delta
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  1 when applied, 0 when the epoch has changed (nothing to do)

local f = redis.call('HMGET', KEYS[1], 'e', 'r')
if f[1] ~= ARGV[1] or (f[2] or '') ~= NODE then return 0 end
local actual_delta, held_delta = tonumber(ARGV[3]), tonumber(ARGV[4])
if actual_delta ~= 0 then redis.call('HINCRBY', KEYS[1], 'a:' .. ARGV[2], actual_delta) end
if held_delta ~= 0 then redis.call('HINCRBY', KEYS[1], 'h:' .. ARGV[2], held_delta) end
return 1

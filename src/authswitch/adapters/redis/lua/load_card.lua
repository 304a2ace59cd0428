-- Adds one card's fields to an account's cached state, if that state is loaded.
--
-- KEYS[1]  account state hash
-- ARGV     gen field value [field value ...]
-- Returns  1 when written, 0 when the account state is not loaded (load it first)

local g = redis.call('HGET', KEYS[1], 'g')
if not g or tonumber(g) < tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1

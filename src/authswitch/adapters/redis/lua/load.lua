-- Replaces an account's cached state with a snapshot read from Postgres.
--
-- KEYS[1]  account state hash
-- ARGV     gen epoch field value [field value ...]
-- NODE     (prepended by cache.py) the data set this runs on, recorded as 'r' (cluster)
-- Returns  1

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'e', ARGV[2])
if NODE ~= '' then redis.call('HSET', KEYS[1], 'r', NODE) end
local chunk = 200  -- stay far below Lua's stack limit for unpack
for i = 3, #ARGV, chunk do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + chunk - 1, #ARGV)))
end
return 1

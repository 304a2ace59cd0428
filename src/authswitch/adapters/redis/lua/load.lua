-- Replaces an account's cached state with a snapshot read from Postgres.
--
-- KEYS[1]  account state hash
-- KEYS[2]  in-flight marks (emptied: the barrier waited for them)
-- ARGV     token gen epoch field value [field value ...]
--          token: the reload barrier this snapshot was read under (begin_load.lua); the
--          state is replaced only while that barrier is in force. '': unconditionally
-- NODE     (prepended by cache.py) the data set this runs on, recorded as 'r' (cluster)
-- Returns  1 when loaded, 0 when the barrier is no longer this token's (nothing written)

if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'L') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'g', ARGV[2], 'e', ARGV[3])
if NODE ~= '' then redis.call('HSET', KEYS[1], 'r', NODE) end
local chunk = 200  -- stay far below Lua's stack limit for unpack
for i = 4, #ARGV, chunk do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + chunk - 1, #ARGV)))
end
return 1

-- Marks an operation in flight on an account whose cached change follows its Postgres write
-- (off-ledger usage moved by a reversal or clearing): the mark is added only if the state is
-- loaded and no reload is under way (see begin_load.lua).
--
-- KEYS[1]  account state hash
-- KEYS[2]  in-flight marks
-- ARGV     gen mark
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  1 when marked, 0 when not (not loaded, or being reloaded)

local f = redis.call('HMGET', KEYS[1], 'g', 'r', 'L')
if not f[1] or tonumber(f[1]) < tonumber(ARGV[1]) or (f[2] or '') ~= NODE or f[3] then
  return 0
end
redis.call('ZADD', KEYS[2], redis.call('TIME')[1], ARGV[2])
return 1

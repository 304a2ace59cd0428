-- Undoes (or applies) a change to one balance, only if the state is still the one the
-- change was made in: after a reload the state already reflects Postgres, the truth.
--
-- KEYS[1]  account state hash
-- ARGV     epoch asset actual_delta held_delta
-- Returns  1 when applied, 0 when the epoch has changed (nothing to do)

if redis.call('HGET', KEYS[1], 'e') ~= ARGV[1] then return 0 end
local actual_delta, held_delta = tonumber(ARGV[3]), tonumber(ARGV[4])
if actual_delta ~= 0 then redis.call('HINCRBY', KEYS[1], 'a:' .. ARGV[2], actual_delta) end
if held_delta ~= 0 then redis.call('HINCRBY', KEYS[1], 'h:' .. ARGV[2], held_delta) end
return 1

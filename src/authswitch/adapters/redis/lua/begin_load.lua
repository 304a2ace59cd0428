-- A reload's barrier: an account's cached state is replaced by a Postgres snapshot only
-- when no operation that changed it is still making its write durable, in any process.
--
-- Every operation that changes the state before its Postgres commit (authorize.lua,
-- apply.lua, credit.lua, admit.lua) adds its in-flight mark to KEYS[2] in the same step
-- (scored with the server's clock, in seconds), and its process removes the mark once the
-- write is durable or known not to be. A reload sets 'L' (its token) and 'Lt' (when) in the
-- state; while 'L' is set those scripts answer MISS to a new operation, so the marks drain
-- within a commit's time; the reloader repeats this script until no mark is left, reads
-- Postgres, and load.lua replaces the state (and drops 'L') only if the barrier is still
-- its own. A mark older than any write can live is one whose process died: it is dropped.
--
-- KEYS[1]  account state hash
-- KEYS[2]  in-flight marks (sorted set: mark -> when it was added, in seconds)
-- ARGV     token gen stale_ms mode mark_max_age_s
--          mode 'miss': a usable state loaded meanwhile will do; 'refresh': the state must
--          be read from Postgres after this call, and is not used until it is (dropped
--          when the barrier is taken); 'abandon': drop this token's barrier
-- NODE     (prepended by cache.py) the data set this runs on; see authorize.lua
-- Returns  {'LOADED'}                 (mode 'miss') the state is loaded and usable
--          {'WAIT'}                   another reload's barrier is in force: call again later
--          {'OURS', marks, expired}   the barrier is this token's; marks: operations still
--                                     in flight (read Postgres once it is 0); expired: marks
--                                     of dead processes dropped by this call
--          {'DONE'}                   (mode 'abandon')

local state, marks = KEYS[1], KEYS[2]
local token, gen, stale_ms, mode = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local f = redis.call('HMGET', state, 'L', 'Lt', 'g', 'r')
if mode == 'abandon' then
  if f[1] == token then redis.call('HDEL', state, 'L', 'Lt') end
  return {'DONE'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if f[1] ~= token then
  if f[1] and now - tonumber(f[2] or '0') < stale_ms then return {'WAIT'} end
  -- No barrier, or one left by a reloader that stopped (its process died): take it.
  if not f[1] and mode == 'miss' and f[3] and tonumber(f[3]) >= gen and (f[4] or '') == NODE then
    return {'LOADED'}
  end
  -- A state replicated from another data set (a promoted replica, a migrated slot) came
  -- with that data set's marks, whose releases went there: they are dropped with it.
  if f[3] and (f[4] or '') ~= NODE then redis.call('DEL', marks) end
  -- A refresh drops the state at once: it is not to be used again, even if the reload
  -- fails (a miss's state is unusable already).
  if mode == 'refresh' then redis.call('DEL', state) end
  redis.call('HSET', state, 'L', token, 'Lt', now)
end
local expired = redis.call('ZREMRANGEBYSCORE', marks, '-inf',
  '(' .. (tonumber(t[1]) - tonumber(ARGV[5])))
return {'OURS', redis.call('ZCARD', marks), expired}

-- Shared by authorize.lua and credit.lua (cache.py puts it before their text): a product's
-- limits against the counters of the account's state hash (ua:<key> amount, uc:<key> count).
local AMOUNT_LIMIT_EXCEEDED, COUNT_LIMIT_EXCEEDED = 26, 27

-- What counter ``key`` has used so far: (amount, count); '' counts nothing.
local function counted(state, key)
  if key == '' then return 0, 0 end
  local v = redis.call('HMGET', state, 'ua:' .. key, 'uc:' .. key)
  return tonumber(v[1] or '0'), tonumber(v[2] or '0')
end

-- Whether ``limits`` take ``total`` more and one more use: 0, or the reason they refuse
-- (every amount first, then every count, as domain/limits.py checks them).
local function over_limits(state, limits, total)
  for _, limit in ipairs(limits) do
    local spent = counted(state, limit.key)
    if limit.amount_max >= 0 and spent + total > limit.amount_max then
      return AMOUNT_LIMIT_EXCEEDED
    end
  end
  for _, limit in ipairs(limits) do
    if limit.key ~= '' and limit.count_max >= 0 then
      local _, uses = counted(state, limit.key)
      if uses + 1 > limit.count_max then return COUNT_LIMIT_EXCEEDED end
    end
  end
  return 0
end

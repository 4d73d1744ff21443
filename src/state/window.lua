-- logwarden shared windows: one run adds one batch's deltas and returns cluster-wide totals.
--
-- KEYS, three per entry: window hash (field T = newest event ms; count windows also hold one
-- field per bucket index, n = the sum of those buckets, F = no bucket below it exists), distinct
-- sorted set (value hash -> newest ms; unused by count
-- windows), samples list (JSON, newest pushed first).
-- ARGV: n_entries, samples_max, then per entry:
--   kind ('c' | 'd'), newest_ms, window_ms, bucket_ms, ttl_ms, threshold, distinct_cap,
--   want_samples ('0' never | '1' when total >= threshold | '2' always),
--   n_deltas, n_deltas pairs (count: bucket index, events; distinct: member, ms),
--   n_samples, n_samples JSON strings (oldest first).
-- Returns per entry: { newest_ms, total, { samples... } }.
-- Only integers and strings cross the boundary; ms times stay below 2^53, exact in Lua numbers.
local n = tonumber(ARGV[1])
local samples_max = tonumber(ARGV[2])
local pos = 3
local out = {}
for e = 1, n do
  local kwin, kset, ksmp = KEYS[3 * e - 2], KEYS[3 * e - 1], KEYS[3 * e]
  local kind = ARGV[pos]
  local newest = tonumber(ARGV[pos + 1])
  local window = tonumber(ARGV[pos + 2])
  local bucket = tonumber(ARGV[pos + 3])
  local ttl = ARGV[pos + 4]
  local threshold = tonumber(ARGV[pos + 5])
  local cap = tonumber(ARGV[pos + 6])
  local want = ARGV[pos + 7]
  local nd = tonumber(ARGV[pos + 8])
  pos = pos + 9

  -- T only moves forward: the newest event of this key on any replica.
  local head = redis.call('HMGET', kwin, 'T', 'n', 'F')
  local prev = head[1]
  local moved = true
  if prev and tonumber(prev) >= newest then
    newest = tonumber(prev)
    moved = false
  end
  -- The window is (newest - window, newest].
  local lower = newest - window
  local total = 0

  if kind == 'c' then
    -- The bucket holding the lower edge overlaps the window and counts; older ones never will.
    local first = math.floor(lower / bucket)
    local sum = tonumber(head[2])
    local low = tonumber(head[3])
    if not sum then
      -- A new key (or one written without the running sum): add up what is there once.
      sum = 0
      local fields = redis.call('HGETALL', kwin)
      for j = 1, #fields, 2 do
        local f = fields[j]
        if f ~= 'T' and f ~= 'n' and f ~= 'F' then
          if tonumber(f) < first then
            redis.call('HDEL', kwin, f)
          else
            sum = sum + tonumber(fields[j + 1])
          end
        end
      end
    elseif low and low < first then
      -- Buckets low .. first-1 left the window: subtract and delete them. T only moves forward,
      -- so `first` never goes back; after a long silence everything is stale at once.
      if first - low > math.ceil(window / bucket) + 1 then
        redis.call('DEL', kwin)
        sum = 0
      else
        for i = low, first - 1 do
          local f = string.format('%d', i)
          local v = redis.call('HGET', kwin, f)
          if v then
            sum = sum - tonumber(v)
            redis.call('HDEL', kwin, f)
          end
        end
      end
    end
    for i = 1, nd do
      if tonumber(ARGV[pos]) >= first then
        redis.call('HINCRBY', kwin, ARGV[pos], ARGV[pos + 1])
        sum = sum + tonumber(ARGV[pos + 1])
      end
      pos = pos + 2
    end
    -- One write for T, the running sum and the lowest bucket (each redis.call has a cost).
    redis.call('HSET', kwin, 'T', string.format('%d', newest), 'n', string.format('%d', sum),
      'F', string.format('%d', first))
    total = sum
  else
    if moved then
      redis.call('HSET', kwin, 'T', string.format('%d', newest))
    end
    for i = 1, nd do
      local t = tonumber(ARGV[pos + 1])
      if t > lower then
        local s = redis.call('ZSCORE', kset, ARGV[pos])
        if (not s) or tonumber(s) < t then
          redis.call('ZADD', kset, ARGV[pos + 1], ARGV[pos])
        end
      end
      pos = pos + 2
    end
    -- Drop values whose newest occurrence left the window, then keep the `cap` newest.
    redis.call('ZREMRANGEBYSCORE', kset, '-inf', string.format('%d', lower))
    redis.call('ZREMRANGEBYRANK', kset, 0, -(cap + 1))
    total = redis.call('ZCARD', kset)
    if total > 0 then
      redis.call('PEXPIRE', kset, ttl)
    end
  end
  redis.call('PEXPIRE', kwin, ttl)

  local ns = tonumber(ARGV[pos])
  pos = pos + 1
  if ns > 0 and samples_max > 0 then
    redis.call('LPUSH', ksmp, unpack(ARGV, pos, pos + ns - 1))
    redis.call('LTRIM', ksmp, 0, samples_max - 1)
    redis.call('PEXPIRE', ksmp, ttl)
  end
  pos = pos + ns
  local samples = {}
  if samples_max > 0 and (want == '2' or (want == '1' and total >= threshold)) then
    samples = redis.call('LRANGE', ksmp, 0, samples_max - 1)
  end
  out[e] = { newest, total, samples }
end
return out

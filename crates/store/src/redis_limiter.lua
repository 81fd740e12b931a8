-- Switchboard's shared limiter: check-and-reserve, settle and budget reads,
-- each one atomic script call (see redis_limiter.rs for the Rust side).
--
-- Every key carries the same hash tag, so one call's keys share a Redis
-- Cluster slot. Numbers that are written go to Redis as the decimal strings
-- the caller sent (never through Lua's doubles, which print large integers
-- as 1e+15); numbers that are compared are doubles, exact below 2^53
-- (about 9 million dollars in nano-dollars).
--
-- KEYS of 'reserve' and 'settle': first the grant's record (hash: m, the
-- minute its reservation counts in; r and t, what reserve answered; done,
-- once settled or cancelled), then the epoch marker (a string that exists
-- once budgets' spend has been seeded from the request log), then four
-- per scope, in the order of the request's scopes:
--   1 in flight: hash  bucket minute -> requests reserved in that minute
--   2 minute:    hash  r -> requests, t -> tokens, of the current minute
--   3 spent:     string  nano-dollars spent in the budget window
--   4 held:      hash  bucket minute -> nano-dollars reserved then
-- (for a scope without a budget, 3 and 4 are named but never touched).
--
-- ARGV[1] is the operation; a fixed header follows, then five values per
-- scope: max_concurrent, requests_per_minute, tokens_per_minute,
-- budget limit, budget TTL in seconds ('0': none). An empty string means
-- that the scope has no such limit, and then nothing is counted for it.
--
-- The grant's record makes both calls idempotent. A reserve whose record
-- exists answers what it answered the first time and counts nothing; a
-- settle whose record says done does nothing. A settle without a record
-- (a grant given while Redis was unreachable, a reserve that never arrived,
-- or one whose lease lapsed) records only its spend, and leaves a record
-- saying done, so that a reserve arriving late is not counted.
--
-- 'reserve' ARGV[2..8]: tokens, cost, current minute, lease in minutes,
--   minute-key TTL (s), in-flight-key and record TTL (s), '1' to refuse
--   to count while the epoch marker is missing ('0' not to look).
--   Returns {0, requests, tokens} (the first scope's counts after this
--   request, -1 where not counted), {1, scope, which} (which: 1
--   max_concurrent, 2 requests_per_minute, 3 tokens_per_minute),
--   {2, scope, used} (budget: spent plus held, before this request),
--   {3} (the marker is missing: the counters were lost, or never seeded,
--   and nothing was counted), or {4} (the grant was settled or cancelled
--   before this reserve arrived).
-- 'settle' ARGV[2..8]: token change (actual minus reserved, signed), held
--   cost negated ('-N'), actual cost, record TTL (s), the part settled
--   ('done' for a whole grant; 'done1' and 'done2' for the two parts of a
--   split one, each settled once on its own), two unused.
--   Returns 0, or 1 when the grant (or this part) was settled already.
-- 'renew' ARGV[2..8]: current minute, held cost ('N'), held cost negated
--   ('-N'), record and in-flight-key TTL (s), three unused. Moves a
--   reservation still counting from the minute it counts in to the
--   current one (its request and its held cost), so it counts for another
--   lease. Returns 1, or 0 when the grant is settled or not counting.
-- 'used' KEYS: spent, held of one scope; ARGV[2..3]: current minute, lease
--   in minutes. Returns spent plus live held.
-- 'floor' KEYS: spent of one scope; ARGV[2..3]: spent (nanos), TTL in
--   seconds ('0' for none). Raises spent to at least ARGV[2]. Returns 0.
-- 'seed' KEYS: the epoch marker, then spent keys; ARGV[2]: the marker's
--   value, or '' to leave it; then per spent key its spent and TTL, as in
--   'floor'. Floors every spent key, then writes the marker. Returns 0.

local operation = ARGV[1]
local HEADER = 8
local PER_SCOPE = 5

-- Sum of a bucket hash's live fields; buckets older than the lease are
-- reservations whose settle never came (a crashed instance), dropped here.
local function live_sum(key, oldest)
  local fields = redis.call('HGETALL', key)
  local sum = 0
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) < oldest then
      redis.call('HDEL', key, fields[j])
    else
      sum = sum + tonumber(fields[j + 1])
    end
  end
  return sum
end

-- Adds a signed amount to a bucket field; a field that would stay at or
-- below zero (its reservation already expired) is removed instead.
local function release(key, field, amount)
  if redis.call('HINCRBY', key, field, amount) <= 0 then
    redis.call('HDEL', key, field)
  end
end

-- Raises a spent counter to at least `spent` (a decimal string).
local function floor(key, spent, ttl)
  if tonumber(redis.call('GET', key) or '0') < tonumber(spent) then
    if tonumber(ttl) > 0 then
      redis.call('SET', key, spent, 'EX', ttl)
    else
      redis.call('SET', key, spent)
    end
  end
end

if operation == 'floor' then
  floor(KEYS[1], ARGV[2], ARGV[3])
  return 0
end

if operation == 'seed' then
  for j = 2, #KEYS do
    floor(KEYS[j], ARGV[2 * j - 1], ARGV[2 * j])
  end
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2])
  end
  return 0
end

if operation == 'used' then
  local oldest = tonumber(ARGV[2]) - tonumber(ARGV[3]) + 1
  local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
  return spent + live_sum(KEYS[2], oldest)
end

-- Keys before the scopes' own.
local LEAD = 2
local GRANT = KEYS[1]
local EPOCH = KEYS[2]
local scopes = (#KEYS - LEAD) / 4
if (#KEYS - LEAD) % 4 ~= 0 or #ARGV ~= HEADER + PER_SCOPE * scopes then
  return redis.error_reply('switchboard limiter: malformed call')
end

if operation == 'reserve' then
  local tokens = tonumber(ARGV[2])
  local cost = tonumber(ARGV[3])
  local minute = ARGV[4]
  local oldest = tonumber(minute) - tonumber(ARGV[5]) + 1
  local minute_ttl = ARGV[6]
  local flight_ttl = ARGV[7]

  -- Counters that were lost (a flush, a restart without persistence) must
  -- be seeded again from the request log before budgets are checked.
  if ARGV[8] == '1' and redis.call('EXISTS', EPOCH) == 0 then
    return {3}
  end

  -- A repeat (a retry after a lost reply) counts nothing again.
  local seen = redis.call('HMGET', GRANT, 'r', 't', 'done', 'done1', 'done2')
  if seen[3] or seen[4] or seen[5] then
    return {4}
  end
  if seen[1] then
    return {0, tonumber(seen[1]), tonumber(seen[2])}
  end

  -- Check every scope first...
  for i = 1, scopes do
    local k = LEAD + (i - 1) * 4
    local a = HEADER + (i - 1) * PER_SCOPE
    local max_concurrent, rpm, tpm, limit = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    if max_concurrent ~= '' and live_sum(KEYS[k + 1], oldest) >= tonumber(max_concurrent) then
      return {1, i, 1}
    end
    if rpm ~= '' or tpm ~= '' then
      local counts = redis.call('HMGET', KEYS[k + 2], 'r', 't')
      if rpm ~= '' and tonumber(counts[1] or '0') >= tonumber(rpm) then
        return {1, i, 2}
      end
      -- A minute with nothing counted yet takes any one request, so a
      -- worst case larger than the whole limit is not refused forever.
      local used = tonumber(counts[2] or '0')
      if tpm ~= '' and used > 0 and used + tokens > tonumber(tpm) then
        return {1, i, 3}
      end
    end
    if limit ~= '' then
      local used = tonumber(redis.call('GET', KEYS[k + 3]) or '0') + live_sum(KEYS[k + 4], oldest)
      if used + cost > tonumber(limit) then
        return {2, i, used}
      end
    end
  end

  -- ...then reserve in all of them.
  local first_requests, first_tokens = -1, -1
  for i = 1, scopes do
    local k = LEAD + (i - 1) * 4
    local a = HEADER + (i - 1) * PER_SCOPE
    local max_concurrent, rpm, tpm, limit = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    if max_concurrent ~= '' then
      redis.call('HINCRBY', KEYS[k + 1], minute, 1)
      redis.call('EXPIRE', KEYS[k + 1], flight_ttl)
    end
    if rpm ~= '' or tpm ~= '' then
      local requests = redis.call('HINCRBY', KEYS[k + 2], 'r', 1)
      local counted = redis.call('HINCRBY', KEYS[k + 2], 't', ARGV[2])
      redis.call('EXPIRE', KEYS[k + 2], minute_ttl)
      if i == 1 then
        first_requests, first_tokens = requests, counted
      end
    end
    if limit ~= '' and ARGV[3] ~= '0' then
      redis.call('HINCRBY', KEYS[k + 4], minute, ARGV[3])
      redis.call('EXPIRE', KEYS[k + 4], flight_ttl)
    end
  end
  redis.call('HSET', GRANT, 'm', minute, 'r', string.format('%d', first_requests),
    't', string.format('%d', first_tokens))
  redis.call('EXPIRE', GRANT, flight_ttl)
  return {0, first_requests, first_tokens}
end

if operation == 'renew' then
  local record = redis.call('HMGET', GRANT, 'm', 'done', 'done1')
  if record[2] or record[3] or not record[1] then
    return 0
  end
  local from, to = record[1], ARGV[2]
  local ttl = ARGV[5]
  for i = 1, scopes do
    local k = LEAD + (i - 1) * 4
    local a = HEADER + (i - 1) * PER_SCOPE
    local max_concurrent, limit = ARGV[a + 1], ARGV[a + 4]
    if max_concurrent ~= '' then
      if from ~= to then
        release(KEYS[k + 1], from, -1)
        redis.call('HINCRBY', KEYS[k + 1], to, 1)
      end
      redis.call('EXPIRE', KEYS[k + 1], ttl)
    end
    if limit ~= '' and ARGV[3] ~= '0' then
      if from ~= to then
        release(KEYS[k + 4], from, ARGV[4])
        redis.call('HINCRBY', KEYS[k + 4], to, ARGV[3])
      end
      redis.call('EXPIRE', KEYS[k + 4], ttl)
    end
  end
  redis.call('HSET', GRANT, 'm', to)
  redis.call('EXPIRE', GRANT, ttl)
  return 1
end

if operation == 'settle' then
  local token_change = ARGV[2]
  local held_release = ARGV[3]
  local actual_cost = ARGV[4]
  local part = ARGV[6]
  if part ~= 'done' and part ~= 'done1' and part ~= 'done2' then
    return redis.error_reply('switchboard limiter: unknown grant part')
  end
  local record = redis.call('HMGET', GRANT, 'm', 'done', part)
  if record[2] or record[3] then
    return 1
  end
  -- The minute the reservation counts in now; none if it never counted
  -- here or has lapsed, and then only the spend is recorded.
  local minute = record[1]
  local reserved_here = minute ~= false
  redis.call('HSET', GRANT, part, '1')
  redis.call('EXPIRE', GRANT, ARGV[5])

  for i = 1, scopes do
    local k = LEAD + (i - 1) * 4
    local a = HEADER + (i - 1) * PER_SCOPE
    local max_concurrent, rpm, tpm, limit, budget_ttl =
      ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
    if reserved_here and max_concurrent ~= '' then
      release(KEYS[k + 1], minute, -1)
    end
    -- The minute's key is gone once the minute is long past; an old
    -- minute that still exists is read by no later reservation but one
    -- from an instance whose clock lags, which this keeps right.
    if reserved_here and (rpm ~= '' or tpm ~= '') and token_change ~= '0'
      and redis.call('EXISTS', KEYS[k + 2]) == 1 then
      if redis.call('HINCRBY', KEYS[k + 2], 't', token_change) < 0 then
        redis.call('HSET', KEYS[k + 2], 't', 0)
      end
    end
    if limit ~= '' then
      if reserved_here and held_release ~= '0' then
        release(KEYS[k + 4], minute, held_release)
      end
      if actual_cost ~= '0' then
        redis.call('INCRBY', KEYS[k + 3], actual_cost)
        if budget_ttl ~= '0' then
          redis.call('EXPIRE', KEYS[k + 3], budget_ttl)
        end
      end
    end
  end
  return 0
end

return redis.error_reply('switchboard limiter: unknown operation')

-- Switchboard's shared limiter (see redis_limiter.rs for the Rust side).
-- Each call is atomic: a 'batch' of reserves, settles and renewals, applied
-- one after the other in the order given, or one of the budget reads and
-- writes 'used', 'floor' and 'seed'.
--
-- Every key carries the same hash tag, so one call's keys share a Redis
-- Cluster slot, and every key a call touches is one of its KEYS. Numbers
-- are compared and summed as Lua doubles, exact below 2^53 (about 9 million
-- dollars in nano-dollars), and written as integers ('%d').
--
-- Counters, per scope (only those of limits the scope has exist):
--   in flight: hash  minute of reservation -> requests reserved then
--   minute:    hash  r -> requests, t -> tokens, of one minute
--   spent:     string  nano-dollars spent in the budget window
--   held:      hash  minute of reservation -> nano-dollars reserved then
--              (10^12 + minute for a lease's: when it lapses it counts
--              as spent, since requests it served may have spent it);
--              its time to live is the budget window's
-- A reservation counts in the minute it was made (or last renewed) for
-- the lease; older fields of the in-flight and held hashes are dropped
-- when next read (a crashed instance's reservations lapse). Times to live
-- are set when a key is made (a minute's counter: 2 minutes; a window's
-- spend: until the window ends plus a day) or, for the in-flight and held
-- hashes, when they gain a field (in flight: the lease plus two minutes,
-- which outlasts every reservation counted in that field; held: as long
-- as the window's spend, which a lapsed lease's hold goes to), not on
-- every request.
--
-- A grant's record, a string at its own key, makes every operation on it
-- idempotent: '<minute>:<requests>:<tokens>:<settled>', where minute is
-- the one its reservation counts in (empty when nothing counts for it
-- here), requests and tokens what its reserve answered, and settled the
-- parts settled: '0' for a whole grant, '1' and '2' for the two parts of
-- a split one, each settled once. A reserve whose record exists answers
-- what it answered the first time and counts nothing (or {4} once
-- settled); a settle of a part already settled does nothing. A settle
-- without a record (a grant given while Redis was unreachable, a reserve
-- that never arrived, or one whose lease lapsed) records only its spend,
-- and leaves a record saying settled, so that a reserve arriving late is
-- not counted.
--
-- 'batch': KEYS[1] is the epoch marker (a string that exists once budgets'
-- spend has been seeded from the request log), the last KEYS the grants'
-- records, one per operation in order; the others are named by index.
-- ARGV[2..5]: lease in minutes, minute-key TTL (s), record and
-- in-flight-key TTL (s), number of scope slots. Then 9 values per slot
-- (a scope with its rules, in one minute and budget window): the key
-- indexes of its in-flight, minute, spent and held counters ('0': none),
-- then max_concurrent, requests_per_minute, tokens_per_minute, budget
-- limit ('' for none) and budget TTL (s, '0' for none). Then the
-- operations, each naming its scopes by slot number, in the request's
-- order:
--   'r' tokens cost minute check_epoch n slot...   (reserve)
--     check_epoch '1': refuse to count while the marker is missing.
--     Answers 0, requests, tokens (the first scope's counts after this
--     request, -1 where not counted); 1, scope, which (which: 1
--     max_concurrent, 2 requests_per_minute, 3 tokens_per_minute);
--     2, scope, used (budget: spent plus held, before this request);
--     3 (the marker is missing: nothing was counted); or 4 (settled or
--     cancelled before this reserve arrived).
--   's' token_change held cost part n slot...      (settle)
--     token_change: actual minus reserved tokens (signed); held: the cost
--     reserved; cost: the actual cost; part '0', '1' or '2'. Answers 0,
--     or 1 when that part was settled already.
--   'l' tokens cost minute check_epoch requests concurrent share n slot...
--     (a lease: a reserve of many requests at once, see redis_lease.rs)
--     As 'r', counting `requests` requests and `concurrent` requests in
--     flight, and granted only if every counter stays within its limit
--     divided by `share` (a lease never takes the last part of a limit).
--     A minute with nothing counted yet has no exception for tokens here.
--     Its held cost is an 'L' field of the held hash.
--   'd' token_change held cost part request_change released n slot...
--     (a lease's settle) As 's', also adding request_change (signed) to
--     the requests of the minute, and releasing `released` requests in
--     flight instead of one; its held cost is released from the 'L' field.
--   'n' minute held part count held_after count_after lease n slot...  (renew)
--     Moves a reservation still counting from the minute it counts in to
--     this one (its `count` requests in flight and its `held` cost), so it
--     counts for another lease. Answers 1, or 0 when it is settled or not
--     counting. A request's renewal (part '0') stops once part 1 is
--     settled, as a grant split after its renewal began is. A lease's
--     (part '2') stops once its part 2 is settled, and after its part 1
--     moves what part 1 left, held_after and count_after (count_after -1:
--     not known when it was sent; nothing is moved then, answering 0).
--     lease: '1' for a lease's renewal (its hold is an 'L' field).
-- Returns three integers per operation, in order (unused ones 0): one
-- flat array, cheaper to build and send than one per operation.
--
-- Within a batch, each counter is read once (the epoch marker and every
-- spent counter in one MGET), kept in a table while the operations run,
-- and written back once at the end: a batch of many requests on one key
-- costs little more than one. A grant's record costs one command per
-- operation: a new reservation writes it with SET NX (which also tells a
-- repeat from a new reserve), a whole grant's settle with SET GET (which
-- also tells what it reserved). The batch is checked whole before any of
-- it runs, so a malformed one changes nothing.
--
-- 'used' KEYS: spent, held of one scope; ARGV[2..4]: current minute, lease
--   in minutes, the spent counter's TTL (s, '0' for none). Returns spent
--   plus live held (lapsed lease holds moved to spent).
-- 'floor' KEYS: spent of one scope; ARGV[2..3]: spent (nanos), TTL in
--   seconds ('0' for none). Raises spent to at least ARGV[2]. Returns 0.
-- 'seed' KEYS: the epoch marker, then spent keys; ARGV[2]: the marker's
--   value, or '' to leave it; then per spent key its spent and TTL, as in
--   'floor'. Floors every spent key, then writes the marker. Returns 0.

local operation = ARGV[1]

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

-- Counters read once per call, changed in place, and written back once
-- by flush(). Grant records are written as they are decided (one command
-- each: SET NX for a new reservation, SET GET for a settle), so a batch
-- is checked whole before any of it runs.
local hashes = {}
local strings = {}
-- Grant records this call has read or written (key -> value; '' when
-- there is none), and those still to be written at the end.
local records = {}
local unwritten = {}

local function hash(key)
  local counter = hashes[key]
  if counter == nil then
    local fields = redis.call('HGETALL', key)
    local values = {}
    for j = 1, #fields, 2 do
      values[fields[j]] = tonumber(fields[j + 1])
    end
    counter = { values = values, changed = {}, ttl = nil, fresh = #fields == 0 }
    hashes[key] = counter
  end
  return counter
end

-- Adds to a bucket field. A hash's time to live is set when it gains a
-- field (a minute's first reservation), which outlasts every reservation
-- counted in that field: keys are not touched again for every request.
local function add(counter, field, amount, ttl)
  local value = counter.values[field]
  if value == nil then
    if ttl then
      counter.ttl = ttl
    end
    value = 0
  end
  counter.values[field] = value + amount
  counter.changed[field] = true
end

-- Adds a signed amount to a bucket field; a field that would stay at or
-- below zero (its reservation already expired) is removed instead.
local function release(counter, field, amount)
  local value = (counter.values[field] or 0) + amount
  if value <= 0 then
    value = nil
  end
  counter.values[field] = value
  counter.changed[field] = true
end

-- A string counter (spent); read from Redis only when its value is needed.
local function counter_of(key)
  local counter = strings[key]
  if counter == nil then
    counter = { value = nil, added = 0, ttl = nil }
    strings[key] = counter
  end
  return counter
end

local function increase(counter, amount)
  counter.added = counter.added + amount
  if counter.value ~= nil then
    counter.value = counter.value + amount
  end
end

-- A lease's hold is kept in the held hash under its minute plus this, a
-- number still (earlier versions of this script read every field as a
-- minute, and see these as holds that never lapse).
local LEASE_FIELD = 1000000000000

-- Sum of a bucket hash's live fields; buckets older than `oldest` are
-- reservations whose settle never came (a crashed instance), dropped here.
-- A lease's hold that lapses (a minute later than a request's, so that a
-- renewal at the minute's turn comes first) is added to `spent` (a string
-- counter) instead: the requests it served may have spent all of it.
local function live_sum(counter, oldest, spent)
  local sum = 0
  for field, value in pairs(counter.values) do
    local minute = tonumber(field)
    local of_lease = minute >= LEASE_FIELD
    if of_lease then
      minute = minute - LEASE_FIELD + 1
    end
    if minute < oldest then
      counter.values[field] = nil
      counter.changed[field] = true
      if of_lease and spent then
        increase(spent, value)
      end
    else
      sum = sum + value
    end
  end
  return sum
end

-- The held hash's field for a reservation of `minute`: a lease's is
-- marked, so that it counts as spent if it lapses.
local function held_field(minute, of_lease)
  if of_lease then
    return string.format('%d', LEASE_FIELD + tonumber(minute))
  end
  return minute
end

-- The held hash lives as long as its budget window's spend (leases' holds
-- must outlast their lapse, to be counted as spent then).
local function held_ttl(slot)
  if slot.budget_ttl ~= '0' then
    return slot.budget_ttl
  end
  return nil
end

local function flush()
  for key, counter in pairs(hashes) do
    local set, gone = {}, {}
    for field in pairs(counter.changed) do
      local value = counter.values[field]
      if value == nil then
        gone[#gone + 1] = field
      else
        set[#set + 1] = field
        set[#set + 1] = string.format('%d', value)
      end
    end
    if #gone > 0 then
      redis.call('HDEL', key, unpack(gone))
    end
    if #set > 0 then
      redis.call('HSET', key, unpack(set))
      if counter.ttl then
        redis.call('EXPIRE', key, counter.ttl)
      end
    end
  end
  for key, counter in pairs(strings) do
    if counter.added ~= 0 then
      local added = string.format('%d', counter.added)
      -- A window's spend expires at a fixed time: set when it is created.
      if redis.call('INCRBY', key, added) == counter.added and counter.ttl then
        redis.call('EXPIRE', key, counter.ttl)
      end
    end
  end
end

if operation == 'used' then
  local oldest = tonumber(ARGV[2]) - tonumber(ARGV[3]) + 1
  local spent = counter_of(KEYS[1])
  spent.value = tonumber(redis.call('GET', KEYS[1]) or '0')
  if ARGV[4] ~= '0' then
    spent.ttl = ARGV[4]
  end
  local held = live_sum(hash(KEYS[2]), oldest, spent)
  local used = spent.value + held
  flush()
  return used
end

if operation ~= 'batch' then
  return redis.error_reply('switchboard limiter: unknown operation')
end

local lease = tonumber(ARGV[2])
local minute_ttl = ARGV[3]
local record_ttl = ARGV[4]
local slot_count = tonumber(ARGV[5])
local SLOT = 9
local FIRST_SLOT = 6
local FIRST_OP = FIRST_SLOT + slot_count * SLOT

local function key_at(index)
  if index == '0' then
    return nil
  end
  return KEYS[tonumber(index)]
end

local slots = {}
for s = 1, slot_count do
  local a = FIRST_SLOT + (s - 1) * SLOT
  slots[s] = {
    inflight = key_at(ARGV[a]),
    minute = key_at(ARGV[a + 1]),
    spent = key_at(ARGV[a + 2]),
    held = key_at(ARGV[a + 3]),
    max_concurrent = tonumber(ARGV[a + 4]),
    rpm = tonumber(ARGV[a + 5]),
    tpm = tonumber(ARGV[a + 6]),
    limit = tonumber(ARGV[a + 7]),
    budget_ttl = ARGV[a + 8],
  }
end

-- The whole batch is checked before any of it runs: an error halfway
-- would leave records written for counters that never were. The records
-- are the last KEYS, one per operation.
local operations = 0
do
  local i = FIRST_OP
  while i <= #ARGV do
    local kind, width = ARGV[i], nil
    if kind == 'r' or kind == 's' then
      width = 6
    elseif kind == 'l' then
      width = 9
    elseif kind == 'd' then
      width = 8
    elseif kind == 'n' then
      width = 9
    end
    local n = width and tonumber(ARGV[i + width - 1])
    if not n then
      return redis.error_reply('switchboard limiter: malformed batch')
    end
    for j = 1, n do
      if not slots[tonumber(ARGV[i + width - 1 + j]) or 0] then
        return redis.error_reply('switchboard limiter: malformed batch')
      end
    end
    operations = operations + 1
    i = i + width + n
  end
  if #KEYS - operations < 1 then
    return redis.error_reply('switchboard limiter: malformed batch')
  end
end

-- The epoch marker and every budget's spent counter, read together by
-- the first reserve that needs either.
local epoch_exists = nil
local function load_strings()
  if epoch_exists ~= nil then
    return
  end
  local names, named = { KEYS[1] }, {}
  for _, slot in ipairs(slots) do
    local key = slot.spent
    if key and not named[key] and counter_of(key).value == nil then
      named[key] = true
      names[#names + 1] = key
    end
  end
  local values = redis.call('MGET', unpack(names))
  epoch_exists = values[1] ~= false
  for j = 2, #names do
    local counter = strings[names[j]]
    counter.value = tonumber(values[j] or '0') + counter.added
  end
end

local function parse(record)
  return string.match(record, '^(%d*):(%-?%d*):(%-?%d*):(%d*)$')
end

-- A grant's record as this call knows it, read once.
local function record_of(key)
  local value = records[key]
  if value == nil then
    value = redis.call('GET', key) or ''
    records[key] = value
  end
  return value
end

-- The answer to a reserve sent again, from its grant's record (nil if the
-- record says nothing was reserved).
local function repeated(value)
  local _, requests, counted, parts = parse(value)
  if parts == nil then
    return nil
  end
  if parts ~= '' then
    return 4, 0, 0
  end
  return 0, tonumber(requests), tonumber(counted)
end

local function settled(parts, part)
  return string.find(parts, '0', 1, true) ~= nil or string.find(parts, part, 1, true) ~= nil
end

-- Each operation answers three integers (see the top of this file).
local function reserve(record, tokens, cost, minute, check_epoch, first, n, wanted, flying, share,
                       of_lease)
  -- Counters that were lost (a flush, a restart without persistence) must
  -- be seeded again from the request log before budgets are checked.
  if check_epoch == '1' then
    load_strings()
    if not epoch_exists then
      return 3, 0, 0
    end
  end
  -- A repeat (a retry after a lost reply) answers as the first did and
  -- counts nothing again.
  local seen = records[record]
  if seen ~= nil then
    local code, a, b = repeated(seen)
    if code then
      return code, a, b
    end
  end
  local oldest = tonumber(minute) - lease + 1
  -- Check every scope first...
  local refused, at, why, first_requests, first_tokens = nil, 0, 0, -1, -1
  for j = 1, n do
    local slot = slots[tonumber(ARGV[first + j])]
    if slot.max_concurrent
      and live_sum(hash(slot.inflight), oldest) + flying > slot.max_concurrent / share then
      refused, at, why = 1, j, 1
      break
    end
    if slot.rpm or slot.tpm then
      local counts = hash(slot.minute).values
      local requests, used = counts.r or 0, counts.t or 0
      if slot.rpm and requests + wanted > slot.rpm / share then
        refused, at, why = 1, j, 2
        break
      end
      -- A minute with nothing counted yet takes any one request, so a
      -- worst case larger than the whole limit is not refused forever.
      if slot.tpm and (used > 0 or share > 1) and used + tokens > slot.tpm / share then
        refused, at, why = 1, j, 3
        break
      end
      if j == 1 then
        first_requests, first_tokens = requests + wanted, used + tokens
      end
    end
    if slot.limit then
      load_strings()
      local spent = counter_of(slot.spent)
      local held = live_sum(hash(slot.held), oldest, spent)
      if slot.budget_ttl ~= '0' then
        spent.ttl = slot.budget_ttl
      end
      local used = spent.value + held
      if used + cost > slot.limit / share then
        refused, at, why = 2, j, used
        break
      end
    end
  end
  if refused then
    -- Refused now, but perhaps granted when first sent.
    local code, a, b = repeated(record_of(record))
    if code then
      return code, a, b
    end
    return refused, at, why
  end
  -- ...then the record, which also tells a repeat from a new reserve...
  local value = minute .. ':' .. string.format('%d', first_requests) .. ':'
    .. string.format('%d', first_tokens) .. ':'
  if seen ~= nil then
    -- Read by this call, and saying nothing was reserved: written at
    -- the end.
    unwritten[record] = true
  elseif not redis.call('SET', record, value, 'NX', 'EX', record_ttl) then
    local code, a, b = repeated(record_of(record))
    if code then
      return code, a, b
    end
    return 4, 0, 0
  end
  records[record] = value
  -- ...and the reservation, in every scope.
  for j = 1, n do
    local slot = slots[tonumber(ARGV[first + j])]
    if slot.max_concurrent then
      add(hash(slot.inflight), minute, flying, record_ttl)
    end
    if slot.rpm or slot.tpm then
      local counts = hash(slot.minute)
      add(counts, 'r', wanted, nil)
      add(counts, 't', tokens, nil)
      if counts.fresh then
        counts.ttl = minute_ttl
      end
    end
    if slot.limit and cost ~= 0 then
      add(hash(slot.held), held_field(minute, of_lease), cost, held_ttl(slot))
    end
  end
  return 0, first_requests, first_tokens
end

local function settle(record, token_change, held, cost, part, first, n, request_change, released,
                      of_lease)
  local value = records[record]
  if value == nil and part == '0' then
    -- A whole grant: mark it settled and learn what it was in one command.
    value = redis.call('SET', record, ':::0', 'EX', record_ttl, 'GET') or ''
    records[record] = ':::0'
  elseif value == nil then
    value = record_of(record)
  end
  local minute, requests, counted, parts = parse(value)
  if parts == nil then
    minute, requests, counted, parts = '', '', '', ''
  end
  if settled(parts, part) then
    return 1, 0, 0
  end
  -- Nothing more will be read from a whole grant's record.
  local now = ':::0'
  if part ~= '0' then
    now = minute .. ':' .. requests .. ':' .. counted .. ':' .. parts .. part
  end
  if records[record] ~= now then
    records[record] = now
    unwritten[record] = true
  end
  -- The minute the reservation counts in now; none if it never counted
  -- here or has lapsed, and then only the spend is recorded.
  local reserved_here = minute ~= ''
  for j = 1, n do
    local slot = slots[tonumber(ARGV[first + j])]
    if reserved_here and slot.max_concurrent and released ~= 0 then
      release(hash(slot.inflight), minute, -released)
    end
    -- The minute's counter is gone once the minute is long past (and is
    -- not made again here); an old minute that still exists is read by no
    -- later reservation but one from an instance whose clock lags, which
    -- this keeps right.
    if reserved_here and (slot.rpm or slot.tpm) and (token_change ~= 0 or request_change ~= 0) then
      local counts = hash(slot.minute)
      if counts.values.r or counts.values.t then
        local tokens = (counts.values.t or 0) + token_change
        if tokens < 0 then
          tokens = 0
        end
        counts.values.t = tokens
        counts.changed.t = true
        if request_change ~= 0 then
          local requests = (counts.values.r or 0) + request_change
          if requests < 0 then
            requests = 0
          end
          counts.values.r = requests
          counts.changed.r = true
        end
      end
    end
    if slot.limit then
      -- A lease's hold that lapsed was counted as spent: only the actual
      -- cost beyond it (or, below it, minus the difference) is added.
      local moved = 0
      if reserved_here and held ~= 0 then
        local holds = hash(slot.held)
        local field = held_field(minute, of_lease)
        if of_lease then
          moved = math.max(held - (holds.values[field] or 0), 0)
        end
        release(holds, field, -held)
      end
      if cost ~= moved then
        local spent = counter_of(slot.spent)
        increase(spent, cost - moved)
        if slot.budget_ttl ~= '0' then
          spent.ttl = slot.budget_ttl
        end
      end
    end
  end
  return 0, 0, 0
end

local function renew(record, to, held, part, count, held_after, count_after, of_lease, first, n)
  local from, requests, counted, parts = parse(record_of(record))
  if not parts or from == '' then
    return 0, 0, 0
  end
  if part == '0' or part == '1' then
    if settled(parts, '1') then
      return 0, 0, 0
    end
  elseif settled(parts, part) then
    return 0, 0, 0
  elseif string.find(parts, '1', 1, true) then
    if count_after < 0 then
      return 0, 0, 0
    end
    held, count = held_after, count_after
  end
  for j = 1, n do
    local slot = slots[tonumber(ARGV[first + j])]
    if slot.max_concurrent and from ~= to then
      local inflight = hash(slot.inflight)
      release(inflight, from, -count)
      add(inflight, to, count, record_ttl)
    end
    if slot.limit and held ~= 0 and from ~= to then
      local holds = hash(slot.held)
      local field = held_field(from, of_lease)
      -- A lease's hold that lapsed already counts as spent.
      local moving = held
      if of_lease then
        moving = math.min(held, holds.values[field] or 0)
      end
      release(holds, field, -moving)
      if moving > 0 then
        add(holds, held_field(to, of_lease), moving, held_ttl(slot))
      end
    end
  end
  records[record] = to .. ':' .. requests .. ':' .. counted .. ':' .. parts
  unwritten[record] = true
  return 1, 0, 0
end

local answers = {}
local i, record = FIRST_OP, #KEYS - operations
while i <= #ARGV do
  local kind, code, a, b = ARGV[i], nil, nil, nil
  record = record + 1
  if kind == 'r' then
    local n = tonumber(ARGV[i + 5])
    code, a, b = reserve(KEYS[record], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
      ARGV[i + 3], ARGV[i + 4], i + 5, n, 1, 1, 1, false)
    i = i + 6 + n
  elseif kind == 'l' then
    local n = tonumber(ARGV[i + 8])
    code, a, b = reserve(KEYS[record], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
      ARGV[i + 3], ARGV[i + 4], i + 8, n, tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]),
      tonumber(ARGV[i + 7]), true)
    i = i + 9 + n
  elseif kind == 's' then
    local n = tonumber(ARGV[i + 5])
    code, a, b = settle(KEYS[record], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
      tonumber(ARGV[i + 3]), ARGV[i + 4], i + 5, n, 0, 1, false)
    i = i + 6 + n
  elseif kind == 'd' then
    local n = tonumber(ARGV[i + 7])
    code, a, b = settle(KEYS[record], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
      tonumber(ARGV[i + 3]), ARGV[i + 4], i + 7, n, tonumber(ARGV[i + 5]),
      tonumber(ARGV[i + 6]), true)
    i = i + 8 + n
  else
    local n = tonumber(ARGV[i + 8])
    code, a, b = renew(KEYS[record], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3],
      tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6]), ARGV[i + 7] == '1',
      i + 8, n)
    i = i + 9 + n
  end
  local at = #answers
  answers[at + 1], answers[at + 2], answers[at + 3] = code, a, b
end
for key in pairs(unwritten) do
  redis.call('SET', key, records[key], 'EX', record_ttl)
end
flush()
return answers

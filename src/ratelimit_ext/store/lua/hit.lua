-- Check and commit hits for groups of requests, each group all or nothing.
--
-- A request is one subject's windows and hits; it has room when every one
-- of its windows has. Within a group, the hits of the requests with room
-- are committed only if every binding request of the group has room,
-- otherwise none is. Groups are independent and decided in order; a group
-- of one request is the usual case, and one call usually carries every
-- group of a pipeline's worth of decisions. A request sees what the groups
-- before it committed and what the requests before it in its own group
-- would commit (two requests on one counter count twice).
--
-- KEYS     the windows' keys in order, as many as are declared; the rest are
--          the last values of ARGV (a Redis Cluster call over several slots
--          of one node, sent with the allow-cross-slot-keys flag).
-- ARGV[1]  now in seconds as a decimal string, or "" to read the server TIME.
-- ARGV[2]  the number of requests.
-- then per request four values: its group (1, 2, ... in order), hits (0
--          checks without counting), binding (1 or 0), its number of windows;
-- then per window four values: algorithm (fw, sw, tb), limit, unit
--          seconds, capacity;
-- then the keys of the windows KEYS does not declare.
--
-- Reply: {now, then per request: room, then per window of the request:
-- room, remaining, reset}. now and reset are strings, because Redis
-- truncates Lua numbers to integers.
--
-- Mirrors ratelimit_ext/store/algorithms.py and MemoryStore operation by
-- operation. Every written key gets its expiry in the same call, so no key
-- lives without TTL. A state past its expiry counts as absent even if the key
-- still exists: the windows see that from their start field, the bucket
-- keeps it in field x.

local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local request_count = tonumber(ARGV[2])
-- ARGV[window_args + 1] is the first value of the first window.
local window_args = 2 + 4 * request_count
local window_count = 0
for r = 1, request_count do
  window_count = window_count + tonumber(ARGV[2 + 4 * r])
end
local undeclared = window_args + 4 * window_count - #KEYS

local function num(value)
  return string.format('%.17g', value)
end

local function remaining(value)
  return math.max(math.floor(value), 0)
end

local function ttl_ms(expires_at)
  return math.max(math.ceil((expires_at - now) * 1000), 1)
end

-- States to write, by key: what committed groups left (written at the end,
-- each key once, in first-seen order), and what the requests with room of
-- the current group would leave. Reads see these before what Redis holds.
local committed, committed_keys = {}, {}
local staged, staged_keys = {}, {}

local function read(key, names)
  local state = staged[key] or committed[key]
  if state == nil then
    return redis.call('HMGET', key, unpack(names))
  end
  local values = {}
  for i, name in ipairs(names) do
    values[i] = state.fields[name] or false
  end
  return values
end

local function fixed_window(key, limit, unit, _, hits, need)
  local start = math.floor(now / unit) * unit
  local stored = read(key, {'s', 'c'})
  local count = 0
  if tonumber(stored[1]) == start then
    count = tonumber(stored[2])
  end
  local reset = start + unit - now
  return {
    room = count + need <= limit,
    kept = {remaining(limit - count), reset},
    committed = {remaining(limit - (count + hits)), reset},
    fields = {s = num(start), c = num(count + hits)},
    expires_at = start + unit,
  }
end

local function sliding_window(key, limit, unit, _, hits, need)
  local start = math.floor(now / unit) * unit
  local stored = read(key, {'s', 'c', 'p'})
  local stored_start = tonumber(stored[1])
  local current, previous = 0, 0
  if stored_start == start then
    current, previous = tonumber(stored[2]), tonumber(stored[3])
  elseif stored_start == start - unit then
    previous = tonumber(stored[2])
  end
  local weight = previous * (1 - (now - start) / unit)
  local estimate = weight + current
  local reset = start + unit - now
  local after = weight + (current + hits)
  return {
    room = estimate + need <= limit,
    kept = {remaining(limit - estimate), reset},
    committed = {remaining(limit - after), reset},
    fields = {s = num(start), c = num(current + hits), p = num(previous)},
    expires_at = start + 2 * unit,
  }
end

local function token_bucket(key, limit, unit, capacity, hits, need)
  if limit <= 0 then
    return {
      room = false,
      kept = {0, unit},
      committed = {0, unit},
      fields = {},
      expires_at = now + unit,
    }
  end
  local rate = limit / unit
  local stored = read(key, {'t', 'ts', 'x'})
  local tokens = capacity
  local stored_expiry = tonumber(stored[3])
  if stored[1] and stored_expiry and stored_expiry > now then
    local elapsed = math.max(now - tonumber(stored[2]), 0)
    tokens = math.min(capacity, tonumber(stored[1]) + elapsed * rate)
  end
  local room = tokens >= need
  local wait
  if room then
    wait = (capacity - tokens) / rate
  else
    wait = (need - tokens) / rate
  end
  local left = tokens - hits
  local until_full = (capacity - left) / rate
  local expires_at = now + until_full
  return {
    room = room,
    kept = {remaining(tokens), wait},
    committed = {remaining(left), until_full},
    fields = {t = num(left), ts = num(now), x = num(expires_at)},
    expires_at = expires_at,
  }
end

local algorithms = {
  fw = fixed_window,
  sw = sliding_window,
  tb = token_bucket,
}

local function key_of(window)
  if window <= #KEYS then
    return KEYS[window]
  end
  return ARGV[undeclared + window]
end

-- Close the current group: keep its staged states if it commits.
local function close_group(commit)
  if commit then
    for _, key in ipairs(staged_keys) do
      if committed[key] == nil then
        committed_keys[#committed_keys + 1] = key
      end
      committed[key] = staged[key]
    end
  end
  staged, staged_keys = {}, {}
end

-- Evaluate every request in order, group by group.
local requests = {}
local group_commits = {}
local group, commit = nil, true
local window = 0
for r = 1, request_count do
  local header = 2 + (r - 1) * 4
  if ARGV[header + 1] ~= group then
    if group ~= nil then
      group_commits[group] = commit
      close_group(commit)
    end
    group, commit = ARGV[header + 1], true
  end
  local hits = tonumber(ARGV[header + 2])
  local request = {
    group = group,
    hits = hits,
    evaluations = {},
    room = true,
  }
  local own = {}
  local own_keys = {}
  for w = 1, tonumber(ARGV[header + 4]) do
    window = window + 1
    local base = window_args + (window - 1) * 4
    local key = key_of(window)
    local evaluation = algorithms[ARGV[base + 1]](
      key, tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
      tonumber(ARGV[base + 4]), hits, math.max(hits, 1))
    request.room = request.room and evaluation.room
    request.evaluations[w] = evaluation
    if own[key] == nil then
      own[key] = evaluation
      own_keys[#own_keys + 1] = key
    end
  end
  if request.room and hits > 0 then
    for _, key in ipairs(own_keys) do
      if staged[key] == nil then
        staged_keys[#staged_keys + 1] = key
      end
      staged[key] = own[key]
    end
  end
  if ARGV[header + 3] == '1' and not request.room then
    commit = false
  end
  requests[r] = request
end
if group ~= nil then
  group_commits[group] = commit
  close_group(commit)
end

-- Write what the committed groups left (each key once) and reply.
for _, key in ipairs(committed_keys) do
  local values = {}
  for name, value in pairs(committed[key].fields) do
    values[#values + 1] = name
    values[#values + 1] = value
  end
  redis.call('HSET', key, unpack(values))
  redis.call('PEXPIRE', key, ttl_ms(committed[key].expires_at))
end

local reply = {num(now)}
for _, request in ipairs(requests) do
  local counted = group_commits[request.group] and request.room and request.hits > 0
  reply[#reply + 1] = request.room and 1 or 0
  for _, evaluation in ipairs(request.evaluations) do
    local shown = counted and evaluation.committed or evaluation.kept
    reply[#reply + 1] = evaluation.room and 1 or 0
    reply[#reply + 1] = shown[1]
    reply[#reply + 1] = num(shown[2])
  end
end
return reply

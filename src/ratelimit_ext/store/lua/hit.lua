-- Check and commit hits against every window of one subject, all or nothing.
--
-- KEYS[i]  one hash per window; all keys of a subject share one hash tag.
-- ARGV[1]  now in seconds as a decimal string, or "" to read the server TIME.
-- ARGV[2]  hits (0 checks without counting).
-- ARGV[3..] four values per window: algorithm (fw, sw, tb), limit,
--           unit seconds, capacity.
--
-- Reply: {allowed, then per window: allowed, remaining, reset seconds}.
-- reset is a string, because Redis truncates Lua numbers to integers.
--
-- Mirrors ratelimit_ext/store/algorithms.py operation by operation. Every
-- written key gets its expiry in the same call, so no key lives without TTL.
-- A state past its expiry counts as absent even if the key still exists: the
-- windows see that from their start field, the bucket keeps it in field x.

local now
if ARGV[1] == '' then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local hits = tonumber(ARGV[2])
local need = math.max(hits, 1)

local function num(value)
  return string.format('%.17g', value)
end

local function remaining(value)
  return math.max(math.floor(value), 0)
end

local function ttl_ms(expires_at)
  return math.max(math.ceil((expires_at - now) * 1000), 1)
end

local function fixed_window(key, limit, unit)
  local start = math.floor(now / unit) * unit
  local stored = redis.call('HMGET', key, 's', 'c')
  local count = 0
  if tonumber(stored[1]) == start then
    count = tonumber(stored[2])
  end
  local reset = start + unit - now
  return {
    room = count + need <= limit,
    kept = {remaining(limit - count), reset},
    committed = {remaining(limit - (count + hits)), reset},
    fields = {'s', num(start), 'c', num(count + hits)},
    expires_at = start + unit,
  }
end

local function sliding_window(key, limit, unit)
  local start = math.floor(now / unit) * unit
  local stored = redis.call('HMGET', key, 's', 'c', 'p')
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
    fields = {'s', num(start), 'c', num(current + hits), 'p', num(previous)},
    expires_at = start + 2 * unit,
  }
end

local function empty_bucket(unit)
  return {
    room = false,
    kept = {0, unit},
    committed = {0, unit},
    fields = {},
    expires_at = now + unit,
  }
end

local function token_bucket(key, limit, unit, capacity)
  if limit <= 0 then
    return empty_bucket(unit)
  end
  local rate = limit / unit
  local stored = redis.call('HMGET', key, 't', 'ts', 'x')
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
    fields = {'t', num(left), 'ts', num(now), 'x', num(expires_at)},
    expires_at = expires_at,
  }
end

local algorithms = {
  fw = fixed_window,
  sw = sliding_window,
  tb = token_bucket,
}

local evaluations = {}
local allowed = true
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local evaluate = algorithms[ARGV[base + 1]]
  local evaluation = evaluate(
    KEYS[i], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
    tonumber(ARGV[base + 4]))
  allowed = allowed and evaluation.room
  evaluations[i] = evaluation
end

local commit = allowed and hits > 0
local written = {}
local reply = {allowed and 1 or 0}
for i, evaluation in ipairs(evaluations) do
  local shown = evaluation.kept
  if commit then
    shown = evaluation.committed
    if not written[KEYS[i]] then
      written[KEYS[i]] = true
      redis.call('HSET', KEYS[i], unpack(evaluation.fields))
      redis.call('PEXPIRE', KEYS[i], ttl_ms(evaluation.expires_at))
    end
  end
  reply[#reply + 1] = evaluation.room and 1 or 0
  reply[#reply + 1] = shown[1]
  reply[#reply + 1] = num(shown[2])
end
return reply

-- Take back hits that lua/hit.lua committed at a known time.
--
-- Used when a group of requests was split over several Redis Cluster masters
-- and one of them refused: the other masters had committed their part.
--
-- KEYS     the windows' keys in order, as many as are declared; the rest are
--          the last values of ARGV, as in lua/hit.lua.
-- ARGV[1]  the time the hits were counted at, as hit.lua replied it.
-- then per window four values: algorithm (fw, sw, tb), unit seconds,
--          capacity, hits.
--
-- A window that has moved on since keeps its count: fixed-window hits of a
-- past window no longer matter, and sliding-window hits that have become
-- the previous window's are taken from there. A bucket gets its tokens back,
-- up to its capacity. Each entry is taken back (a key listed twice was
-- committed twice). Keys keep their expiry.
-- Reply: the number of windows changed.

local at = tonumber(ARGV[1])
local window_count = (#ARGV - 1 + #KEYS) / 5
local undeclared = 1 + 4 * window_count - #KEYS

local function num(value)
  return string.format('%.17g', value)
end

local changed = 0
for w = 1, window_count do
  local key = KEYS[w] or ARGV[undeclared + w]
  local base = 1 + (w - 1) * 4
  local algorithm = ARGV[base + 1]
  local unit = tonumber(ARGV[base + 2])
  local capacity = tonumber(ARGV[base + 3])
  local hits = tonumber(ARGV[base + 4])
  if algorithm == 'tb' then
    local tokens = tonumber(redis.call('HGET', key, 't'))
    if tokens then
      redis.call('HSET', key, 't', num(math.min(tokens + hits, capacity)))
      changed = changed + 1
    end
  else
    local start = math.floor(at / unit) * unit
    local stored = redis.call('HMGET', key, 's', 'c', 'p')
    local stored_start = tonumber(stored[1])
    if stored_start == start then
      redis.call('HSET', key, 'c', num(math.max(tonumber(stored[2]) - hits, 0)))
      changed = changed + 1
    elseif algorithm == 'sw' and stored_start == start + unit then
      redis.call('HSET', key, 'p', num(math.max(tonumber(stored[3]) - hits, 0)))
      changed = changed + 1
    end
  end
end
return changed

-- Append one audit record to a capped list, in one atomic step.
--
-- KEYS[1]  the list (its own hash tag, so one cluster slot).
-- ARGV[1]  the record: one JSON line.
-- ARGV[2]  how many records the list keeps; older ones are trimmed away.
--
-- Reply: the list's length after the trim.

redis.call('RPUSH', KEYS[1], ARGV[1])
local keep = tonumber(ARGV[2])
redis.call('LTRIM', KEYS[1], -keep, -1)
return redis.call('LLEN', KEYS[1])

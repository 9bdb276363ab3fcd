"""Lua scripts of the Redis backend: each runs atomically inside Redis.

The location scripts take the same five keys: block hash, location set,
the replica's held set, the event counter and the event log.
"""

# Appends one event "<seq>:<body>" to the log, trims it to ARGV limit, returns seq.
_EMIT = """
local function emit(seq_key, log_key, body, limit)
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', log_key, seq, seq .. ':' .. body)
  local extra = redis.call('ZCARD', log_key) - tonumber(limit)
  if extra > 0 then redis.call('ZREMRANGEBYRANK', log_key, 0, extra - 1) end
  return seq
end
"""

# ARGV: replica, hex hash, event body, log limit, now ms, parent, size, checksum, layout, producer.
# Returns the event's sequence when the block gained its first location, else 0.
STORED = _EMIT + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'parent', ARGV[6], 'size', ARGV[7], 'checksum', ARGV[8],
             'layout', ARGV[9], 'producer', ARGV[10], 'last_access', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'last_access', ARGV[5])
  redis.call('PERSIST', KEYS[1])
end
redis.call('SADD', KEYS[3], ARGV[2])
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 and redis.call('SCARD', KEYS[2]) == 1 then
  return emit(KEYS[4], KEYS[5], ARGV[3], ARGV[4])
end
return 0
"""

# ARGV: replica, hex hash, event body, log limit, keep metadata (1/0), orphan ttl ms.
# Returns the event's sequence when the block lost its last location, else 0.
DROPPED = _EMIT + """
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
if ARGV[5] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
else
  redis.call('DEL', KEYS[1])
end
return emit(KEYS[4], KEYS[5], ARGV[3], ARGV[4])
"""

# KEYS: block hashes' metadata keys; ARGV: now ms. Never creates a key.
TOUCH = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'last_access', ARGV[1]) end
end
return 0
"""

# KEYS: the lease key; ARGV: key prefix, lease id.
DELETE_LEASE = """
local replica = redis.call('HGET', KEYS[1], 'replica')
redis.call('DEL', KEYS[1])
if replica then redis.call('SREM', ARGV[1] .. 'leases:' .. replica, ARGV[2]) end
return 0
"""

"""The Lua scripts behind shared rooms: each change of a room is one script in Redis.

Every script takes the room's five keys and the same first six arguments (now in ms or
0 for Redis' clock, lease in ms, channel, room name, log size, history size); what
follows is the script's own. A post, a join, a leave is: next number, append to the
log (and to the history if it is a message), publish ``"<seq> <msgpack event>"``.
Expired presence leases are swept by whichever script touches the room next.
"""

from __future__ import annotations

from ._redis import LUA_NOW

__all__ = ["JOIN", "LEAVE", "PARTS", "POST", "RANGE", "RENEW"]

PARTS = ("seq", "log", "history", "members", "alive", "epoch")
"""The room's keys, in the order the scripts take them."""

# KEYS: 1 counter, 2 log, 3 history, 4 members (hash id -> info), 5 alive (zset id -> lease
# end), 6 epoch (when this order began: a Redis that restarted empty starts a new one)
_LIB = (
    LUA_NOW
    + """local lease, channel, room = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local log_max, history_max = tonumber(ARGV[5]), tonumber(ARGV[6])
local function publish(event)
  local seq = redis.call('INCR', KEYS[1])
  local id = seq .. '-0'
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', log_max, id, 'e', event)
  if cmsgpack.unpack(event).type == 'message' then
    redis.call('XADD', KEYS[3], 'MAXLEN', history_max, id, 'e', event)
  end
  redis.call('PUBLISH', channel, seq .. ' ' .. event)
  return seq
end
local function epoch()
  local t = redis.call('TIME')
  redis.call('SET', KEYS[6], t[1] .. '.' .. t[2], 'NX')
  return redis.call('GET', KEYS[6])
end
local function sweep()
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)) do
    local info = redis.call('HGET', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('HDEL', KEYS[4], id)
    if info then
      local member = cmsgpack.unpack(info)
      publish(cmsgpack.pack({type = 'leave', room = room, time = now / 1000, id = id,
                             name = member.name, reason = 'gone'}))
    end
  end
end
"""
)

# ARGV 7..: member id, member info, join event, '1' if the name must be unique, the name.
# A name a present member has refuses the join with {-1}.
JOIN = (
    _LIB
    + """
sweep()
if ARGV[10] == '1' then
  local present = redis.call('HGETALL', KEYS[4])
  for i = 2, #present, 2 do
    if present[i - 1] ~= ARGV[7] and cmsgpack.unpack(present[i]).name == ARGV[11] then
      return {-1}
    end
  end
end
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
redis.call('ZADD', KEYS[5], now + lease, ARGV[7])
local order = epoch()
local seq = publish(ARGV[9])
return {seq, redis.call('HGETALL', KEYS[4]), redis.call('XRANGE', KEYS[3], '-', '+'), order}
"""
)

# ARGV 7..: sender id, event
POST = (
    _LIB
    + """
if redis.call('HEXISTS', KEYS[4], ARGV[7]) == 0 then return 0 end
return publish(ARGV[8])
"""
)

# ARGV 7..: member id, event
LEAVE = (
    _LIB
    + """
if redis.call('HDEL', KEYS[4], ARGV[7]) == 0 then return 0 end
redis.call('ZREM', KEYS[5], ARGV[7])
return publish(ARGV[8])
"""
)

# ARGV 7..: member id, member info, ... (pairs): this process's members, renewed (and
# written back after an outage); the expired are announced gone. Replies the epoch and
# the last number.
RENEW = (
    _LIB
    + """
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[5], now + lease, ARGV[i])
end
local order = epoch()
sweep()
return {order, tonumber(redis.call('GET', KEYS[1]) or '0')}
"""
)

# ARGV 7..: the first and last number wanted
RANGE = (
    _LIB
    + """
return redis.call('XRANGE', KEYS[2], ARGV[7] .. '-0', ARGV[8] .. '-0')
"""
)

--[[
  The sweeper: removes memberships whose deadline has passed, oldest first,
  at most LIMIT per call, each with a `ttl` event stamped at its deadline.
  Safe to run from several processes at once: an entry is handled once.

  KEYS[1] {sNN}:due        "<uid>:<id>" scored by deadline
  KEYS[2] {sNN}:seg:slug   live segments, id -> slug
  KEYS[3] {sNN}:seg:dying  deleted segments being purged, id -> "<ms>:<slug>"
  KEYS[4] {sNN}:cnt        members per segment id
  KEYS[5] {sNN}:events     history stream
  KEYS[6] {sNN}:seg:pct    percent segments, id -> percent x 100
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)
  ARGV[3] limit, entries per call

  Returns the number of due entries handled (LIMIT means: call again).
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local dueKey, segSlugKey, segDyingKey, countsKey, stream, segPctKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rcall = redis.call
--- @include "common"

local prefix = ARGV[1]
local now = scriptTime(ARGV[2])
local limit = requirePositive(ARGV[3], 'limit')

local due = rcall('ZRANGEBYSCORE', dueKey, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  local member, deadline = due[i], tonumber(due[i + 1])
  local sep = string.find(member, ':', 1, true)
  local uid, id = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  local userKey = prefix .. uid
  local state = rcall('HGET', userKey, id)
  -- A stale entry (membership removed, or given another deadline) is only dropped.
  if state and tonumber(state) == deadline then
    local slug = rcall('HGET', segSlugKey, id)
    if slug then
      endMembership(userKey, segPctKey, id, slug, uid)
      rcall('HINCRBY', countsKey, id, -1)
      emit(stream, uid, slug, 'remove', deadline, 'ttl')
    else
      local dying = rcall('HGET', segDyingKey, id)
      if dying then
        rcall('HDEL', userKey, id)
        dyingRemoval(stream, uid, dying, deadline)
      end
    end
  end
  rcall('ZREM', dueKey, member)
end
return #due / 2

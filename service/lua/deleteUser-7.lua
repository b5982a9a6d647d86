--[[
  Forgets a user: every membership ends (`user_deleted`, or `ttl` at the
  deadline for one already past it) and the user is no longer known.
  Idempotent: deleting an unknown user changes nothing.

  KEYS[1] {sNN}:u:<uid>    the user's memberships
  KEYS[2] {sNN}:users      known users
  KEYS[3] {sNN}:seg:slug   live segments, id -> slug
  KEYS[4] {sNN}:seg:dying  deleted segments being purged, id -> "<ms>:<slug>"
  KEYS[5] {sNN}:cnt        members per segment id
  KEYS[6] {sNN}:due        "<uid>:<id>" scored by deadline
  KEYS[7] {sNN}:events     history stream
  ARGV[1] user id
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns the number of memberships removed by the deletion itself.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local userKey, usersKey, segSlugKey, segDyingKey, countsKey, dueKey, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rcall = redis.call
--- @include "common"

local uid = requireUserId(ARGV[1])
local now = scriptTime(ARGV[2])

settleUser(userKey, segSlugKey, nil, segDyingKey, countsKey, dueKey, stream, uid, now)
local removed = 0
local fields = rcall('HGETALL', userKey)
for i = 1, #fields, 2 do
  local id, deadline = fields[i], deadlineOf(fields[i + 1])
  if deadline then
    if deadline > 0 then rcall('ZREM', dueKey, uid .. ':' .. id) end
    -- settleUser left only live segments' memberships.
    local slug = rcall('HGET', segSlugKey, id)
    rcall('HINCRBY', countsKey, id, -1)
    emit(stream, uid, slug, 'remove', now, 'user_deleted')
    removed = removed + 1
  end
end
rcall('DEL', userKey)
rcall('SREM', usersKey, uid)
return removed

--[[
  One bounded step of a deletion in one shard: walks the shard's known users
  with SSCAN from CURSOR and removes the dying segment from each, writing a
  `segment_deleted` event stamped with the moment the segment left the
  shard (or `ttl` at the deadline, if that came first; see dyingRemoval).
  When the walk is complete the segment is dead.

  KEYS[1] {sNN}:users      known users
  KEYS[2] {sNN}:seg:dying  id -> "<ms>:<slug>"
  KEYS[3] {sNN}:seg:dead   ids whose deletion is complete
  KEYS[4] {sNN}:cnt        members per segment id
  KEYS[5] {sNN}:due        "<uid>:<id>" scored by deadline
  KEYS[6] {sNN}:events     history stream
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2] segment id
  ARGV[3] SSCAN cursor ("0" to start)
  ARGV[4] SSCAN count (bounds the work of one call)

  Returns the next cursor; "0" when the shard is done.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local usersKey, segDyingKey, segDeadKey, countsKey, dueKey, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rcall = redis.call
--- @include "common"

local prefix, id = ARGV[1], ARGV[2]
requireNumber(id, 'segment id')
requireNumber(ARGV[3], 'cursor')
local count = requirePositive(ARGV[4], 'count')
local dying = rcall('HGET', segDyingKey, id)
if not dying then return '0' end

local scan = rcall('SSCAN', usersKey, ARGV[3], 'COUNT', count)
local users = scan[2]
for i = 1, #users do
  local uid = users[i]
  local userKey = prefix .. uid
  local state = rcall('HGET', userKey, id)
  if state then purgeMember(userKey, dueKey, stream, uid, id, state, dying) end
end
if scan[1] == '0' then
  rcall('HDEL', segDyingKey, id)
  rcall('HDEL', countsKey, id)
  rcall('SADD', segDeadKey, id)
end
return scan[1]

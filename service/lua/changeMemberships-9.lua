--[[
  Adds and removes segments of one user, all or nothing.

  Every slug is resolved first: if any is unknown nothing changes and the
  unknown slugs come back. Then, in this order: an unknown user is
  registered (percent cohorts, as in getMemberships), the user is settled
  (memberships past their deadline end with `ttl` at the deadline, those of
  deleted segments still being purged end as the purge would), removes
  apply, adds apply. An add of a segment the user has changes no membership
  and writes no event, but sets the deadline the add names (none: no
  deadline). Removing a member of a percent segment leaves the marker "x",
  so later rollouts keep the user out. A deadline from a ttl is counted
  from this script's time, on the Redis server's clock.

  KEYS[1] {sNN}:u:<uid>    the user's memberships
  KEYS[2] {sNN}:users      known users
  KEYS[3] {sNN}:seg:id     live segments, slug -> id
  KEYS[4] {sNN}:seg:slug   live segments, id -> slug
  KEYS[5] {sNN}:seg:pct    percent segments, id -> percent x 100
  KEYS[6] {sNN}:seg:dying  deleted segments being purged, id -> "<ms>:<slug>"
  KEYS[7] {sNN}:cnt        members per segment id
  KEYS[8] {sNN}:due        "<uid>:<id>" scored by deadline
  KEYS[9] {sNN}:events     history stream
  ARGV[1] user id
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)
  ARGV[3] n, the number of adds
  ARGV[4 .. 3+3n] triples: slug, deadline (ms since epoch, 0 for none),
          ttl (ms, 0 for none; the deadline is then now + ttl); not both
  ARGV[4+3n ..]   slugs to remove

  Returns {0, slug, deadline, ...} (the user's live memberships after the
  change, deadline 0 for none), {3, unknown slug, ...}, or {4, slug} when
  the deadline given for that slug is not after now (nothing is changed).
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local userKey, usersKey, segIdKey, segSlugKey, segPctKey, segDyingKey, countsKey, dueKey, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local rcall = redis.call
--- @include "common"

local uid = requireUserId(ARGV[1])
local now = scriptTime(ARGV[2])
local nAdd = requireNumber(ARGV[3], 'number of adds')
if #ARGV < 3 + 3 * nAdd then
  badArg('expected ' .. nAdd .. ' slug/deadline/ttl triples')
end

local slugs, deadlines = {}, {}
local tooEarly = nil
for i = 1, nAdd do
  slugs[i] = ARGV[1 + 3 * i]
  local deadline = requireNumber(ARGV[2 + 3 * i], 'deadline')
  local ttl = requireNumber(ARGV[3 + 3 * i], 'ttl')
  if ttl > 0 then
    if deadline ~= 0 then badArg('a deadline and a ttl for ' .. slugs[i]) end
    deadline = now + ttl
  elseif deadline ~= 0 and deadline <= now and not tooEarly then
    tooEarly = slugs[i]
  end
  deadlines[i] = deadline
end
for i = 4 + 3 * nAdd, #ARGV do
  slugs[#slugs + 1] = ARGV[i]
end
if tooEarly then return {4, tooEarly} end

local ids = {}
if #slugs > 0 then
  ids = rcall('HMGET', segIdKey, unpack(slugs))
  local unknown = {3}
  for i = 1, #slugs do
    if not ids[i] then unknown[#unknown + 1] = slugs[i] end
  end
  if #unknown > 1 then return unknown end
end

registerUser(usersKey, userKey, segSlugKey, segPctKey, countsKey, stream, uid, now)
settleUser(userKey, segSlugKey, segPctKey, segDyingKey, countsKey, dueKey, stream, uid, now)

for i = nAdd + 1, #slugs do
  local id = ids[i]
  local old = deadlineOf(rcall('HGET', userKey, id) or 'x')
  if old then
    if rcall('HEXISTS', segPctKey, id) == 1 then
      rcall('HSET', userKey, id, 'x')
    else
      rcall('HDEL', userKey, id)
    end
    if old > 0 then rcall('ZREM', dueKey, uid .. ':' .. id) end
    rcall('HINCRBY', countsKey, id, -1)
    emit(stream, uid, slugs[i], 'remove', now, 'manual')
  end
end

for i = 1, nAdd do
  local id, deadline = ids[i], deadlines[i]
  local state = rcall('HGET', userKey, id)
  local old = deadlineOf(state or 'x')
  if old then
    if old > 0 and old ~= deadline then rcall('ZREM', dueKey, uid .. ':' .. id) end
  else
    rcall('HINCRBY', countsKey, id, 1)
    emit(stream, uid, slugs[i], 'add', now, 'manual', deadline)
  end
  rcall('HSET', userKey, id, deadline)
  if deadline > 0 then rcall('ZADD', dueKey, deadline, uid .. ':' .. id) end
end

local result = liveMemberships(userKey, segSlugKey, now)
table.insert(result, 1, 0)
return result

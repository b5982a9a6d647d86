--[[
  One bounded step of a percent rollout in one shard: walks the shard's
  known users with SSCAN from CURSOR and makes the segment's percent true of
  each: a user in the cohort who is not a member (and was not removed by
  hand, state "x") is added; a member the percentage added ("p") who is no
  longer in the cohort is removed. Members added by hand are never touched.
  The percent is read on every call, so concurrent ramps converge on the
  latest one.

  KEYS[1] {sNN}:users     known users
  KEYS[2] {sNN}:seg:slug  id -> slug
  KEYS[3] {sNN}:seg:pct   id -> percent x 100
  KEYS[4] {sNN}:seg:hi    id -> highest percent x 100 ever applied
  KEYS[5] {sNN}:cnt       members per segment id
  KEYS[6] {sNN}:events    history stream
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2] segment id
  ARGV[3] SSCAN cursor ("0" to start)
  ARGV[4] SSCAN count (bounds the work of one call)
  ARGV[5] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns {next cursor ("0" when the shard is done), added, removed}.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local usersKey, segSlugKey, segPctKey, segHiKey, countsKey, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rcall = redis.call
--- @include "common"

local prefix, id = ARGV[1], ARGV[2]
requireNumber(id, 'segment id')
requireNumber(ARGV[3], 'cursor')
local count = requirePositive(ARGV[4], 'count')
local now = scriptTime(ARGV[5])
local slug = rcall('HGET', segSlugKey, id)
if not slug then return {'0', 0, 0} end
local pct = tonumber(rcall('HGET', segPctKey, id) or '0')
local hi = tonumber(rcall('HGET', segHiKey, id) or '0')

local added, removed = 0, 0
local scan = rcall('SSCAN', usersKey, ARGV[3], 'COUNT', count)
local users = scan[2]
for i = 1, #users do
  local uid = users[i]
  local bucket = bucketOf(slug, uid)
  if bucket < pct then
    if rcall('HSETNX', prefix .. uid, id, 'p') == 1 then
      added = added + 1
      emit(stream, uid, slug, 'add', now, 'percent')
    end
  elseif bucket < hi then
    local userKey = prefix .. uid
    if rcall('HGET', userKey, id) == 'p' then
      rcall('HDEL', userKey, id)
      removed = removed + 1
      emit(stream, uid, slug, 'remove', now, 'percent')
    end
  end
end
if added ~= removed then rcall('HINCRBY', countsKey, id, added - removed) end
return {scan[1], added, removed}

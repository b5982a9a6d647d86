--[[
  Registers users of one shard as known, each with the percent cohorts they
  fall in (a `percent` add event each). Users known already are left alone.

  KEYS[1] {sNN}:users     known users
  KEYS[2] {sNN}:seg:slug  live segments, id -> slug
  KEYS[3] {sNN}:seg:pct   percent segments, id -> percent x 100
  KEYS[4] {sNN}:cnt       members per segment id
  KEYS[5] {sNN}:events    history stream
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)
  ARGV[3 ..] user ids

  Returns the number of users that were not known before.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local usersKey, segSlugKey, segPctKey, countsKey, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rcall = redis.call
--- @include "common"

local prefix = ARGV[1]
local now = scriptTime(ARGV[2])
for i = 3, #ARGV do requireUserId(ARGV[i]) end

local created = 0
for i = 3, #ARGV do
  local uid = ARGV[i]
  created = created + registerUser(usersKey, prefix .. uid, segSlugKey, segPctKey, countsKey, stream, uid, now)
end
return created

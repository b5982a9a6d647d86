--[[
  The lookup hot path: one user's live segments. A user never seen before is
  registered on the spot and gets every percent cohort they fall in (with a
  `percent` add event each), so a lookup of any user answers the same as it
  will for ever after, in one round trip.

  KEYS[1] {sNN}:u:<uid>   the user's memberships
  KEYS[2] {sNN}:users     known users of the shard
  KEYS[3] {sNN}:seg:slug  live segments, id -> slug
  KEYS[4] {sNN}:seg:pct   percent segments, id -> percent x 100
  KEYS[5] {sNN}:cnt       members per segment id
  KEYS[6] {sNN}:events    history stream
  ARGV[1] user id (decimal)
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns a flat array slug, deadline (ms, 0 for none), ... in no order;
  memberships past their deadline are left out.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local userKey, usersKey, segSlugKey, segPctKey, countsKey, stream =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rcall = redis.call
--- @include "common"

local uid = requireUserId(ARGV[1])
local now = scriptTime(ARGV[2])

if rcall('EXISTS', userKey) == 0 then
  registerUser(usersKey, userKey, segSlugKey, segPctKey, countsKey, stream, uid, now)
end
local live = liveMemberships(userKey, segSlugKey, now)
return live

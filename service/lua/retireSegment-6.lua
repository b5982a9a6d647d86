--[[
  First step of a deletion in one shard: the segment leaves the shard's
  catalogue (no read returns it, no change can name it from here on) and
  becomes "dying" until purgeSegment has removed its members, whose
  removals are stamped with the time given here: after every change this
  shard applied while the segment was still in it.

  KEYS[1] {sNN}:seg:id     slug -> id
  KEYS[2] {sNN}:seg:slug   id -> slug
  KEYS[3] {sNN}:seg:pct    id -> percent x 100
  KEYS[4] {sNN}:seg:hi     id -> highest percent x 100 ever applied
  KEYS[5] {sNN}:seg:dying  id -> "<ms>:<slug>"
  KEYS[6] {sNN}:seg:rev    id -> catalogue revision registered
  ARGV[1] segment id
  ARGV[2] slug
  ARGV[3] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns 1.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local segIdKey, segSlugKey, segPctKey, segHiKey, segDyingKey, segRevKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rcall = redis.call
--- @include "common"

local id, slug = ARGV[1], ARGV[2]
requireNumber(id, 'segment id')
local now = scriptTime(ARGV[3])
retire(segIdKey, segSlugKey, segPctKey, segHiKey, segDyingKey, segRevKey, id, slug, now)
return 1

--[[
  Makes a shard's copy of the catalogue hold a segment (or its new percent).
  Idempotent; a segment id that was deleted is never registered again, and
  a revision older than the one the shard has is ignored, so a late or
  repeated call can neither bring a deleted segment back nor undo a change.
  A slug created again while its old segment is still being deleted retires
  the old id in this shard first, so a slug never names two segments.

  KEYS[1] {sNN}:seg:id     slug -> id
  KEYS[2] {sNN}:seg:slug   id -> slug
  KEYS[3] {sNN}:seg:pct    id -> percent x 100
  KEYS[4] {sNN}:seg:hi     id -> highest percent x 100 ever applied
  KEYS[5] {sNN}:seg:dying  id -> "<ms>:<slug>", deletions being purged
  KEYS[6] {sNN}:seg:dead   ids whose deletion is complete
  KEYS[7] {sNN}:seg:rev    id -> catalogue revision registered
  ARGV[1] segment id
  ARGV[2] slug
  ARGV[3] percent x 100, 0 for none
  ARGV[4] catalogue revision
  ARGV[5] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns 1 when registered, 0 when the id is deleted, the revision old or
  the slug already names a newer segment.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local segIdKey, segSlugKey, segPctKey, segHiKey, segDyingKey, segDeadKey, segRevKey =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rcall = redis.call
--- @include "common"

local id = ARGV[1]
local slug = ARGV[2]
local pct = requireNumber(ARGV[3], 'percent')
local rev = requireNumber(ARGV[4], 'revision')
requireNumber(id, 'segment id')
local now = scriptTime(ARGV[5])
if rcall('HEXISTS', segDyingKey, id) == 1 or rcall('SISMEMBER', segDeadKey, id) == 1 then
  return 0
end
if rev < tonumber(rcall('HGET', segRevKey, id) or '0') then return 0 end
local older = rcall('HGET', segIdKey, slug)
-- Ids only grow: a slug naming a newer segment means this call is stale.
if older and tonumber(older) > tonumber(id) then return 0 end
if older and older ~= id then
  retire(segIdKey, segSlugKey, segPctKey, segHiKey, segDyingKey, segRevKey, older, slug, now)
end
rcall('HSET', segRevKey, id, rev)
rcall('HSET', segIdKey, slug, id)
rcall('HSET', segSlugKey, id, slug)
if pct > 0 then
  rcall('HSET', segPctKey, id, pct)
  if pct > tonumber(rcall('HGET', segHiKey, id) or '0') then rcall('HSET', segHiKey, id, pct) end
else
  rcall('HDEL', segPctKey, id)
end
return 1

--[[
  Creates a segment in the global catalogue and hands it a new id (ids are
  never reused, so a slug created again starts empty). The shards learn of
  it afterwards through registerSegment.

  KEYS[1] {g}:segments  slug -> JSON {id, description, pct, created_at, rev}
  KEYS[2] {g}:nextid    last id handed out
  KEYS[3] {g}:events    segment lifecycle stream
  KEYS[4] {g}:rollouts  id -> revision of a percent rollout still to run
  ARGV[1] slug
  ARGV[2] description
  ARGV[3] percent x 100 (1 .. 10000), 0 for none
  ARGV[4] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns {0, JSON} or {1} when the slug exists.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local segmentsKey, nextIdKey, stream, rolloutsKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rcall = redis.call
--- @include "common"

local slug, description = ARGV[1], ARGV[2]
local pct = requireNumber(ARGV[3], 'percent')
local now = scriptTime(ARGV[4])
if pct > 10000 then badArg('percent x 100 must be at most 10000') end
if rcall('HEXISTS', segmentsKey, slug) == 1 then return {1} end

local id = rcall('INCR', nextIdKey)
local doc = cjson.encode({id = id, description = description, pct = pct, created_at = now, rev = 1})
rcall('HSET', segmentsKey, slug, doc)
-- Marked in the same script, so a crash before the rollout is repaired.
if pct > 0 then rcall('HSET', rolloutsKey, id, 1) end
rcall('XADD', stream, '*', 'o', 'created', 's', slug, 't', now, 'p', percentText(pct), 'desc', description, 'id', id)
return {0, doc}

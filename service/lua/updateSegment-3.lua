--[[
  Changes a segment's description and/or percent in the global catalogue.
  The shards learn of a new percent afterwards through registerSegment and
  rolloutSegment.

  KEYS[1] {g}:segments  slug -> JSON {id, description, pct, created_at, rev}
  KEYS[2] {g}:events    segment lifecycle stream
  KEYS[3] {g}:rollouts  id -> revision of a percent rollout still to run
  ARGV[1] slug
  ARGV[2] "1" to set the description, else "0"
  ARGV[3] description
  ARGV[4] "1" to set the percent, else "0"
  ARGV[5] percent x 100 (1 .. 10000), 0 for none
  ARGV[6] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns {0, JSON} or {2} when there is no such segment.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local segmentsKey, stream, rolloutsKey = KEYS[1], KEYS[2], KEYS[3]
local rcall = redis.call
--- @include "common"

local slug = ARGV[1]
local pct = requireNumber(ARGV[5], 'percent')
local now = scriptTime(ARGV[6])
if pct > 10000 then badArg('percent x 100 must be at most 10000') end
local raw = rcall('HGET', segmentsKey, slug)
if not raw then return {2} end

local doc = cjson.decode(raw)
if ARGV[2] == '1' then doc.description = ARGV[3] end
if ARGV[4] == '1' then doc.pct = pct end
-- The revision lets a shard ignore a registration older than the one it has.
doc.rev = (doc.rev or 1) + 1
raw = cjson.encode(doc)
rcall('HSET', segmentsKey, slug, raw)
-- Marked in the same script, so a crash before the rollout is repaired.
if ARGV[4] == '1' then rcall('HSET', rolloutsKey, doc.id, doc.rev) end
rcall('XADD', stream, '*', 'o', 'changed', 's', slug, 't', now, 'p', percentText(doc.pct),
  'desc', doc.description, 'id', doc.id)
return {0, raw}

--[[
  Removes a segment from the global catalogue and records the deletion as
  pending: the shards then retire the id (retireSegment) and purge its
  members (purgeSegment), and the pending entry goes when all are done.

  KEYS[1] {g}:segments  slug -> JSON {id, description, pct, created_at}
  KEYS[2] {g}:deleting  id -> JSON {slug, ts}
  KEYS[3] {g}:events    segment lifecycle stream
  ARGV[1] slug
  ARGV[2] now: empty, the script reads the Redis server's clock (TIME); a time in
          ms since epoch is taken only by the test build (see scriptTime)

  Returns {0, id} or {2} when there is no such segment.
  Errors: BADARG when an argument is malformed (nothing is changed).
]]
local segmentsKey, deletingKey, stream = KEYS[1], KEYS[2], KEYS[3]
local rcall = redis.call
--- @include "common"

local slug = ARGV[1]
local now = scriptTime(ARGV[2])
local raw = rcall('HGET', segmentsKey, slug)
if not raw then return {2} end

local doc = cjson.decode(raw)
rcall('HDEL', segmentsKey, slug)
rcall('HSET', deletingKey, doc.id, cjson.encode({slug = slug, ts = now}))
rcall('XADD', stream, '*', 'o', 'deleted', 's', slug, 't', now, 'p', percentText(doc.pct),
  'desc', doc.description, 'id', doc.id)
return {0, doc.id}

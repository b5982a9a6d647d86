--[[
  Shared helpers, inlined into a script by `--- @include "common"`.
  Expects `rcall` (redis.call) to be bound by the including script.

  Membership states in a user hash (segment id -> state):
    "0"     member, added by hand, no deadline
    "<ms>"  member, added by hand, leaves at that time (ms since epoch)
    "p"     member, added by a percent rollout
    "x"     not a member: removed by hand from a percent segment
  A dying segment (deleted, members being purged) is "<deleted ms>:<slug>"
  in {sNN}:seg:dying.
]]

-- One history event: one stream entry per state change (docs/design.md).
local function emit(stream, uid, slug, op, ts, reason, deadline)
  if deadline and tonumber(deadline) and tonumber(deadline) > 0 then
    rcall('XADD', stream, '*', 'u', uid, 's', slug, 'o', op, 't', ts, 'r', reason, 'd', deadline)
  else
    rcall('XADD', stream, '*', 'u', uid, 's', slug, 'o', op, 't', ts, 'r', reason)
  end
end

-- bucket(slug, uid) = first 32 bits of sha1("<slug>:<uid>") mod 10000, in
-- hundredths of a percent; the user is in the cohort when it is below p100.
local function bucketOf(slug, uid)
  return tonumber(string.sub(redis.sha1hex(slug .. ':' .. uid), 1, 8), 16) % 10000
end

local function inCohort(slug, uid, p100)
  return bucketOf(slug, uid) < p100
end

-- The deadline of a member state, 0 for none; nil for "x" (not a member).
local function deadlineOf(state)
  if state == 'x' then return nil end
  if state == 'p' then return 0 end
  return tonumber(state) or 0
end

local function parseDying(value)
  local sep = string.find(value, ':', 1, true)
  return tonumber(string.sub(value, 1, sep - 1)), string.sub(value, sep + 1)
end

-- How a membership of a dying segment ended: at its deadline if that came
-- before the deletion, else by the deletion.
local function dyingRemoval(stream, uid, dyingValue, deadline)
  local deletedAt, slug = parseDying(dyingValue)
  if deadline > 0 and deadline <= deletedAt then
    emit(stream, uid, slug, 'remove', deadline, 'ttl')
  else
    emit(stream, uid, slug, 'remove', deletedAt, 'segment_deleted')
  end
end

-- Adds every percent cohort the user falls in. Returns 1 for a new user.
local function registerUser(usersKey, userKey, segSlugKey, segPctKey, countsKey, stream, uid, now)
  if rcall('SADD', usersKey, uid) == 0 then return 0 end
  local pct = rcall('HGETALL', segPctKey)
  for i = 1, #pct, 2 do
    local id = pct[i]
    local slug = rcall('HGET', segSlugKey, id)
    if slug and inCohort(slug, uid, tonumber(pct[i + 1])) and rcall('HSETNX', userKey, id, 'p') == 1 then
      rcall('HINCRBY', countsKey, id, 1)
      emit(stream, uid, slug, 'add', now, 'percent')
    end
  end
  return 1
end

-- A membership ends at its deadline. A user in the cohort of a percent
-- segment keeps the marker "x", so rollouts leave them out (as after a
-- removal by hand) instead of adding them back at the next ramp.
local function endMembership(userKey, segPctKey, id, slug, uid)
  local pct = segPctKey and rcall('HGET', segPctKey, id)
  if pct and inCohort(slug, uid, tonumber(pct)) then
    rcall('HSET', userKey, id, 'x')
  else
    rcall('HDEL', userKey, id)
  end
end

-- Removes the user's memberships whose deadline has passed, each with its
-- `ttl` event at the deadline. Memberships of dying segments are left to the
-- purge unless their deadline came first. segPctKey may be nil when the
-- caller forgets the user anyway.
local function expireUser(userKey, segSlugKey, segPctKey, segDyingKey, countsKey, dueKey, stream, uid, now)
  local fields = rcall('HGETALL', userKey)
  for i = 1, #fields, 2 do
    local id, deadline = fields[i], deadlineOf(fields[i + 1])
    if deadline and deadline > 0 and deadline <= now then
      local slug = rcall('HGET', segSlugKey, id)
      local dying = (not slug) and rcall('HGET', segDyingKey, id)
      if slug or (dying and deadline <= parseDying(dying)) then
        rcall('ZREM', dueKey, uid .. ':' .. id)
        if slug then
          endMembership(userKey, segPctKey, id, slug, uid)
          rcall('HINCRBY', countsKey, id, -1)
          emit(stream, uid, slug, 'remove', deadline, 'ttl')
        else
          rcall('HDEL', userKey, id)
          dyingRemoval(stream, uid, dying, deadline)
        end
      end
    end
  end
end

-- The user's live memberships as a flat array: id, slug, deadline, ...
local function liveMemberships(userKey, segSlugKey, now)
  local fields = rcall('HGETALL', userKey)
  local ids, deadlines = {}, {}
  for i = 1, #fields, 2 do
    local deadline = deadlineOf(fields[i + 1])
    if deadline and (deadline == 0 or deadline > now) then
      ids[#ids + 1] = fields[i]
      deadlines[#deadlines + 1] = deadline
    end
  end
  local out = {}
  if #ids == 0 then return out end
  local slugs = rcall('HMGET', segSlugKey, unpack(ids))
  for i = 1, #ids do
    if slugs[i] then
      out[#out + 1] = slugs[i]
      out[#out + 1] = deadlines[i]
    end
  end
  return out
end

-- Percent as the API shows it ("10.5"), "" for none: lifecycle events.
local function percentText(pct100)
  if pct100 == 0 then return '' end
  return tostring(pct100 / 100)
end

local function requireNumber(value, name)
  local n = tonumber(value)
  if not n or n < 0 or n ~= math.floor(n) then
    error({err = 'BADARG ' .. name .. ' must be a non-negative integer, got ' .. tostring(value)})
  end
  return n
end

local function requireUserId(value)
  if type(value) ~= 'string' or not string.match(value, '^[1-9][0-9]*$') or #value > 19 then
    error({err = 'BADARG user id must be a positive integer, got ' .. tostring(value)})
  end
  return value
end

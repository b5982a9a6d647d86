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
-- before the segment left the shard, else by the deletion, stamped with the
-- moment it left the shard (from then on no read returned it). Every change
-- the shard applied before that ran before the retirement on the same
-- clock, so none sorts after this removal; and an add of a segment created
-- again under the same slug comes after the retirement, so it sorts after
-- this removal, whenever the purge reaches the user.
local function dyingRemoval(stream, uid, dyingValue, deadline)
  local retiredAt, slug = parseDying(dyingValue)
  if deadline > 0 and deadline <= retiredAt then
    emit(stream, uid, slug, 'remove', deadline, 'ttl')
  else
    emit(stream, uid, slug, 'remove', retiredAt, 'segment_deleted')
  end
end

-- Removes a user's membership (state) of a dying segment, with its event.
local function purgeMember(userKey, dueKey, stream, uid, id, state, dying)
  rcall('HDEL', userKey, id)
  local deadline = deadlineOf(state)
  if deadline then
    if deadline > 0 then rcall('ZREM', dueKey, uid .. ':' .. id) end
    dyingRemoval(stream, uid, dying, deadline)
  end
end

-- Takes a segment out of a shard's catalogue: from here on no read returns
-- it and no change can name it; its members are purged by purgeSegment and
-- their removals stamped with `now`, the moment it left this shard (so
-- after any change the shard applied while it was still there, see
-- dyingRemoval).
local function retire(segIdKey, segSlugKey, segPctKey, segHiKey, segDyingKey, segRevKey, id, slug, now)
  -- The slug may already name a newer segment created after this deletion.
  if rcall('HGET', segIdKey, slug) == id then rcall('HDEL', segIdKey, slug) end
  rcall('HDEL', segSlugKey, id)
  rcall('HDEL', segPctKey, id)
  rcall('HDEL', segHiKey, id)
  rcall('HDEL', segRevKey, id)
  rcall('HSETNX', segDyingKey, id, now .. ':' .. slug)
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

-- Brings one user's memberships up to date before a change: those whose
-- deadline has passed end (`ttl` at the deadline), and those of deleted
-- segments still being purged end now (as the purge would: `ttl` or
-- `segment_deleted`, see dyingRemoval), so the user's own events that follow
-- come after them in the stream, also when the slug was created again.
-- segPctKey may be nil when the caller forgets the user anyway.
local function settleUser(userKey, segSlugKey, segPctKey, segDyingKey, countsKey, dueKey, stream, uid, now)
  local fields = rcall('HGETALL', userKey)
  for i = 1, #fields, 2 do
    local id, state = fields[i], fields[i + 1]
    local deadline = deadlineOf(state)
    local slug = rcall('HGET', segSlugKey, id)
    if slug then
      if deadline and deadline > 0 and deadline <= now then
        rcall('ZREM', dueKey, uid .. ':' .. id)
        endMembership(userKey, segPctKey, id, slug, uid)
        rcall('HINCRBY', countsKey, id, -1)
        emit(stream, uid, slug, 'remove', deadline, 'ttl')
      end
    else
      local dying = rcall('HGET', segDyingKey, id)
      if dying then purgeMember(userKey, dueKey, stream, uid, id, state, dying) end
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
  -- In slices: unpack() of thousands of values overflows Lua's C stack.
  for first = 1, #ids, 1000 do
    local last = math.min(first + 999, #ids)
    local slugs = rcall('HMGET', segSlugKey, unpack(ids, first, last))
    for i = first, last do
      local slug = slugs[i - first + 1]
      if slug then
        out[#out + 1] = slug
        out[#out + 1] = deadlines[i]
      end
    end
  end
  return out
end

-- Percent as the API shows it ("10.5"), "" for none: lifecycle events.
local function percentText(pct100)
  if pct100 == 0 then return '' end
  return tostring(pct100 / 100)
end

-- Argument errors: a plain string error (level 0: no position), since Redis
-- 6.2 cannot pass on an error table; the loader recognises "BADARG".
local function badArg(message)
  error('BADARG ' .. message, 0)
end

-- An integer 0 .. 2^53 (exact in a Lua number): times in ms, ids, counts.
local function requireNumber(value, name)
  local n = tonumber(value)
  if not n or n ~= n or n < 0 or n > 9007199254740992 or n ~= math.floor(n) then
    badArg(name .. ' must be an integer from 0 to 2^53, got ' .. tostring(value))
  end
  return n
end

local function requirePositive(value, name)
  local n = requireNumber(value, name)
  if n == 0 then badArg(name .. ' must be positive') end
  return n
end

-- Time. Every script takes it from the Redis server's clock (TIME), inside
-- the script: one clock for every API process, read in the order the
-- scripts run, so events stamped with it sort in the order the changes
-- happened (SPEC §3), and deadlines and "due" are judged on that clock too.
-- A script's "now" argument is empty in production. Tests that drive time
-- by hand run a test build of the scripts (service.scripts.load_scripts
-- with a clock), the only build in which the next line reads true: only it
-- takes an explicit time from the argument. The production build refuses
-- one (BADARG), so no caller of the production scripts can set the time.
local TEST_CLOCK = false

local function scriptTime(given)
  if given == nil or given == '' then
    local t = rcall('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  if not TEST_CLOCK then badArg('an explicit time is taken by the test build only') end
  return requireNumber(given, 'now')
end

-- A user id stays a decimal string (2^63-1 is not exact in a Lua number).
local function requireUserId(value)
  if type(value) ~= 'string' or not string.match(value, '^[1-9][0-9]*$') or #value > 19
      or (#value == 19 and value > '9223372036854775807') then
    badArg('user id must be an integer from 1 to 2^63-1, got ' .. tostring(value))
  end
  return value
end

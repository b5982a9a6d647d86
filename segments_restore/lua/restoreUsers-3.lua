--[[
  segments restore: writes one batch of one shard's users as history left
  them (segments_restore.restore): each user known, their hash, the due index
  of their deadlines, and the removals history lacks (a `ttl` at a deadline
  passed while Redis was gone, a `segment_deleted` a purge did not finish)
  appended to the shard's stream. Bounded by the caller: at most a few
  hundred users a call, about a millisecond.

  KEYS[1] {sNN}:users    known users
  KEYS[2] {sNN}:due      "<uid>:<id>" scored by deadline
  KEYS[3] {sNN}:events   history stream
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2] users, one a line: "<uid>[ <segment id> <state>]..."; a state is
          "0", "p", "x" or a deadline in ms
  ARGV[3] removals, one a line: "<uid> <slug> <ms> <reason>"

  Returns the number of users written.
]]
local usersKey, dueKey, stream = KEYS[1], KEYS[2], KEYS[3]
local rcall = redis.call
local prefix = ARGV[1]

local written = 0
for line in string.gmatch(ARGV[2], '[^\n]+') do
  local words = {}
  for word in string.gmatch(line, '%S+') do words[#words + 1] = word end
  local uid = words[1]
  rcall('SADD', usersKey, uid)
  local userKey = prefix .. uid
  -- In slices: unpack() of thousands of values overflows Lua's C stack.
  for first = 2, #words, 1000 do
    rcall('HSET', userKey, unpack(words, first, math.min(first + 999, #words)))
  end
  for i = 2, #words, 2 do
    local state = words[i + 1]
    if state ~= '0' and state ~= 'p' and state ~= 'x' then
      rcall('ZADD', dueKey, state, uid .. ':' .. words[i])
    end
  end
  written = written + 1
end
for line in string.gmatch(ARGV[3], '[^\n]+') do
  local uid, slug, ts, reason = string.match(line, '^(%S+) (%S+) (%S+) (%S+)$')
  rcall('XADD', stream, '*', 'u', uid, 's', slug, 'o', 'remove', 't', ts, 'r', reason)
end
return written

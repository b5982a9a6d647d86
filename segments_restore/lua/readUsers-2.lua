--[[
  segments verify: reads one batch of one shard's users in one call (a
  pipeline of HGETALLs costs the client far more than it costs Redis).
  Read only; bounded by the caller: at most a few hundred users a call.

  KEYS[1] {sNN}:users    known users
  KEYS[2] {sNN}:due      "<uid>:<id>" scored by deadline
  ARGV[1] user key prefix, "{sNN}:u:"
  ARGV[2 ..] user ids

  Returns one string, a line per user in the order given:
  "<known 0|1>[ <segment id> <state> <due>]..." where <due> is the score of
  "<uid>:<id>" in the due index ("-" when absent).
]]
local usersKey, dueKey = KEYS[1], KEYS[2]
local rcall = redis.call
local prefix = ARGV[1]

local out = {}
for i = 2, #ARGV do
  local uid = ARGV[i]
  local parts = {tostring(rcall('SISMEMBER', usersKey, uid))}
  local fields = rcall('HGETALL', prefix .. uid)
  for j = 1, #fields, 2 do
    local id, state = fields[j], fields[j + 1]
    local due = '-'
    if state ~= '0' and state ~= 'p' and state ~= 'x' then
      due = rcall('ZSCORE', dueKey, uid .. ':' .. id) or '-'
    end
    parts[#parts + 1] = id .. ' ' .. state .. ' ' .. due
  end
  out[#out + 1] = table.concat(parts, ' ')
end
return table.concat(out, '\n')

--[[
  Clears the mark of a finished percent rollout, unless a newer change of
  the same segment (a higher revision) marked it again meanwhile: that
  rollout still has to run, or be resumed by repair.

  KEYS[1] {g}:rollouts  id -> revision of a percent rollout still to run
  ARGV[1] segment id
  ARGV[2] revision the finished rollout applied

  Returns 1 when cleared, 0 when a newer rollout is pending.
]]
local rolloutsKey = KEYS[1]
local rcall = redis.call

local marked = tonumber(rcall('HGET', rolloutsKey, ARGV[1]) or '0')
if marked > tonumber(ARGV[2]) then return 0 end
rcall('HDEL', rolloutsKey, ARGV[1])
return 1

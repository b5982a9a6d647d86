--[[
  mixed: 90% lookup, 10% change (see lookup.lua and change.lua), drawn at
  random per request.
]]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

function request()
  if math.random(10) == 1 then
    return bench.change_request()
  end
  return bench.lookup_request()
end

--[[
  ceiling: GET /healthz, the constant small JSON endpoint of the same app.
  Built through wrk.format per request like every other scenario, so the
  generator spends the same CPU per request and the ratio compares servers.
]]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

function request()
  return wrk.format("GET", "/healthz")
end

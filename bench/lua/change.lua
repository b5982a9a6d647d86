--[[
  change: POST /api/v1/users/{id}/segments for a random user: two adds with
  ttl_seconds=ttl and one remove, three distinct slugs of the pool.
]]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

request = bench.change_request

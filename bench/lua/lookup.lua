--[[
  lookup: GET /api/v1/users/{id}/segments for a random user; uniform over
  users=N, or Zipf-skewed when ids=PATH names the bench's Zipf table.
]]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

request = bench.lookup_request

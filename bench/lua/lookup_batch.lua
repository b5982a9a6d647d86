--[[
  lookup-batch: POST /api/v1/users/lookup with batch=B (default 100) random
  user ids.
]]
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

request = bench.batch_request

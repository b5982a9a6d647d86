--[[
  Shared by every scenario script of `segments bench` (loaded with dofile
  from the scenario's own folder). Builds random requests cheaply and
  prints the run's figures as one JSON line from done().

  Arguments (after `--` on the wrk command line), each `key=value`:
    users=N      user ids are drawn from 1..N, uniformly (default 1000)
    ids=PATH     draw user ids from this file instead (one id a line, each
                 line equally likely): the Zipf table the bench writes
    segments=K   size of the segment pool BENCH_00 .. BENCH_<K-1> (default 20)
    prefix=P     slug prefix of the pool (default BENCH_)
    ttl=S        ttl_seconds of the adds of a change (default 3600)
    batch=B      ids per lookup-batch request (default 100)
    token=T      sends `Authorization: Bearer T`
    seed=S       random seed; thread n uses S + n (default 1)

  Output: done() prints `BENCH_RESULT {json}` with latency percentiles in
  microseconds, the request count, the error counts and the duration (us).
]]

bench = {}

local threads_started = 0
function setup(thread)
  threads_started = threads_started + 1
  thread:set("bench_thread", threads_started)
end

local function parse_args(args)
  local opts = {
    users = 1000, segments = 20, prefix = "BENCH_", ttl = 3600, batch = 100, seed = 1,
  }
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    if key == nil then
      error("bench: argument must be key=value, got " .. arg)
    end
    opts[key] = tonumber(value) or value
  end
  return opts
end

local function load_ids(path)
  local ids = {}
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    ids[n] = line
  end
  if n == 0 then
    error("bench: no ids in " .. path)
  end
  return ids, n
end

function bench.init(args)
  local opts = parse_args(args)
  bench.opts = opts
  math.randomseed(opts.seed + (bench_thread or 0))
  if opts.ids then
    local ids, n = load_ids(opts.ids)
    bench.user = function() return ids[math.random(n)] end
  else
    local users = opts.users
    bench.user = function() return tostring(math.random(users)) end
  end
  local slugs = {}
  for i = 1, opts.segments do
    slugs[i] = string.format("%s%02d", opts.prefix, i - 1)
  end
  bench.slugs = slugs
  wrk.headers["Content-Type"] = "application/json"
  if opts.token then
    wrk.headers["Authorization"] = "Bearer " .. opts.token
  end
end

-- Three distinct slugs of the pool, uniformly.
function bench.three_slugs()
  local slugs = bench.slugs
  local k = #slugs
  local a = math.random(k)
  local b = math.random(k - 1)
  if b >= a then b = b + 1 end
  local c = math.random(k - 2)
  local lo, hi = math.min(a, b), math.max(a, b)
  if c >= lo then c = c + 1 end
  if c >= hi then c = c + 1 end
  return slugs[a], slugs[b], slugs[c]
end

function bench.lookup_request()
  return wrk.format("GET", "/api/v1/users/" .. bench.user() .. "/segments")
end

function bench.change_request()
  local add1, add2, remove = bench.three_slugs()
  local ttl = bench.opts.ttl
  local body = string.format(
    '{"add":[{"slug":"%s","ttl_seconds":%d},{"slug":"%s","ttl_seconds":%d}],"remove":["%s"]}',
    add1, ttl, add2, ttl, remove)
  return wrk.format("POST", "/api/v1/users/" .. bench.user() .. "/segments", nil, body)
end

function bench.batch_request()
  local ids = {}
  for i = 1, bench.opts.batch do
    ids[i] = bench.user()
  end
  local body = '{"user_ids":[' .. table.concat(ids, ",") .. ']}'
  return wrk.format("POST", "/api/v1/users/lookup", nil, body)
end

function init(args)
  bench.init(args)
end

function done(summary, latency, requests)
  local e = summary.errors
  local parts = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
    parts[#parts + 1] = string.format('"%s":%d', tostring(p), latency:percentile(p))
  end
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"percentiles":{%s}}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev, table.concat(parts, ",")))
end

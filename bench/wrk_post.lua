-- wrk script for bench/serve_load.py: POST the request bodies of a file (one JSON body a line) in turn, each
-- thread from its own offset, and at the end print one line "WRK_JSON {...}" with the completed requests,
-- the run's duration, wrk's error counts (status = HTTP answers > 399) and 1000 latency quantiles in us.
-- Usage: wrk -t T -c C -d 2s --latency -s bench/wrk_post.lua URL -- BODIES_FILE

local next_thread = 0
local requests = {}
local k = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  local path = args[1]
  if path == nil then
    error("wrk_post.lua needs the bodies file: wrk ... -s wrk_post.lua URL -- FILE")
  end
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  if #requests == 0 then
    error("wrk_post.lua: no request bodies in " .. path)
  end
  k = ((thread_index or 0) * 997) % #requests
end

function request()
  k = k + 1
  if k > #requests then
    k = 1
  end
  return requests[k]
end

function done(summary, latency, _)
  local e = summary.errors
  local q = {}
  if summary.requests > 0 then
    for i = 1, 1000 do
      q[i] = string.format("%d", latency:percentile((i - 0.5) / 10))
    end
  end
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "quantiles_us": [%s]}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(q, ",")
  ))
end

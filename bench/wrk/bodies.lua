-- wrk script: POST the JSON bodies of a file, one body per line, cycling; used by
-- bench/scripts/benchmark_matrix.py. Environment: BODIES (the file), EMBED_API_KEY (optional).
-- Each thread starts at its own offset, so concurrent connections send different texts.
-- Prints one line at the end:
--   RESULT {"requests":N,"seconds":S,"p50_ms":..,"p95_ms":..,"p99_ms":..,"max_ms":..,
--           "socket_errors":N,"timeouts":N,"status":{"200":N,"429":N,...}}
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do
  bodies[#bodies + 1] = line
end
local key = os.getenv("EMBED_API_KEY")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key then wrk.headers["Authorization"] = "Bearer " .. key end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("offset", thread_count * 7919)
  table.insert(threads, thread)
end

local n = 0
status = {}

function init(args)
  n = offset or 0
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end

function response(code, headers, body)
  local key = tostring(code)
  status[key] = (status[key] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local per_thread = thread:get("status")
    for code, count in pairs(per_thread or {}) do
      counts[code] = (counts[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', code, count)
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"socket_errors":%d,"timeouts":%d,"status":{%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.connect + e.read + e.write, e.timeout,
    table.concat(parts, ",")))
end

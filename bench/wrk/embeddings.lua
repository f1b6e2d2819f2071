-- wrk script: POST /v1/embeddings with one distinct text per request, cycling 1024 texts.
-- Environment: EMBED_MODEL (default all-MiniLM-L6-v2), EMBED_API_KEY (optional),
-- EMBED_INPUTS (texts per request, default 1: then "input" is one string).
-- Prints one machine-readable line at the end: RESULT rps=... p50_ms=... p99_ms=... errors=... non2xx=...
local model = os.getenv("EMBED_MODEL") or "all-MiniLM-L6-v2"
local key = os.getenv("EMBED_API_KEY")
local inputs = tonumber(os.getenv("EMBED_INPUTS") or "1")
local function text(i)
  return string.format('"sentence number %d about topic %d and more words %d"', i, i % 17, i * 7)
end
local bodies = {}
for i = 1, 1024 do
  local input = text(i)
  if inputs > 1 then
    local texts = {}
    for j = 0, inputs - 1 do texts[#texts + 1] = text((i + j - 1) % 1024 + 1) end
    input = "[" .. table.concat(texts, ",") .. "]"
  end
  bodies[i] = string.format('{"model":"%s","input":%s}', model, input)
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key then wrk.headers["Authorization"] = "Bearer " .. key end

request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % 1024) + 1])
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end

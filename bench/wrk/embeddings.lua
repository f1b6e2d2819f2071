-- wrk script: POST /v1/embeddings with one distinct text per request, cycling 1024 texts.
-- Environment: EMBED_MODEL (default all-MiniLM-L6-v2), EMBED_API_KEY (optional).
-- Prints one machine-readable line at the end: RESULT rps=... p50_ms=... p99_ms=... errors=... non2xx=...
local model = os.getenv("EMBED_MODEL") or "all-MiniLM-L6-v2"
local key = os.getenv("EMBED_API_KEY")
local bodies = {}
for i = 1, 1024 do
  bodies[i] = string.format('{"model":"%s","input":"sentence number %d about topic %d and more words %d"}',
    model, i, i % 17, i * 7)
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

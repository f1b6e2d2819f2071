"""Locust load test for any OpenAI-compatible /v1/embeddings deployment (this platform or a peer).

    locust -f bench/locustfile.py --headless -u 32 -r 8 -t 60s --host http://127.0.0.1:3000 \
        --csv .cache/locust

Environment: ``EMBED_MODEL`` (default all-MiniLM-L6-v2), ``EMBED_API_KEY`` (sent as a Bearer
token when set), ``EMBED_SET`` (a set of ``corpora/sample_queries.jsonl``: query, p32,
p128, p512 or mixed; default query), ``EMBED_INPUTS`` (inputs per request, default 1),
``EMBED_PATH`` (default /v1/embeddings; infinity-emb serves /embeddings).

Locust is a Python client: on a small machine it takes CPU from a server on the same host
(about 4 ms per request measured here), so use it from another machine, or use ``wrk``
(``bench/scripts/benchmark_matrix.py``) for throughput on one box. Each response is checked:
HTTP 200, one embedding per input, in order, of the same length; failures are reported by
locust with the status code and error message.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, between, task

DATASET = Path(__file__).resolve().parents[1] / "corpora" / "sample_queries.jsonl"  # corpora.SAMPLE_QUERIES
MODEL = os.environ.get("EMBED_MODEL", "all-MiniLM-L6-v2")
INPUTS = int(os.environ.get("EMBED_INPUTS", "1"))
PATH = os.environ.get("EMBED_PATH", "/v1/embeddings")
SET = os.environ.get("EMBED_SET", "query")
TEXTS = [row["text"] for row in map(json.loads, DATASET.read_text().splitlines()) if row["set"] == SET]
if not TEXTS:
    raise SystemExit(f"EMBED_SET={SET!r} names no set of {DATASET}")
HEADERS = {"Authorization": f"Bearer {os.environ['EMBED_API_KEY']}"} if os.environ.get("EMBED_API_KEY") else {}
_counter = itertools.count()


class EmbeddingsUser(FastHttpUser):
    wait_time = between(0, 0)  # closed loop: the next request as soon as the last one returns

    @task
    def embed(self) -> None:
        start = next(_counter) * INPUTS
        texts = [TEXTS[(start + i) % len(TEXTS)] for i in range(INPUTS)]
        body = {"model": MODEL, "input": texts[0] if INPUTS == 1 else texts, "encoding_format": "float"}
        with self.client.post(PATH, json=body, headers=HEADERS, name=f"{PATH} x{INPUTS}",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            data = response.json().get("data", [])
            if [item.get("index") for item in data] != list(range(INPUTS)):
                response.failure(f"expected {INPUTS} embeddings in order, got indices {[d.get('index') for d in data]}")
            elif len({len(item["embedding"]) for item in data}) != 1:
                response.failure("embeddings of different lengths in one response")

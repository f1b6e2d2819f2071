"""Tiny random-weight models through the whole vLLM path, against PyTorch references.

A 2-layer Qwen3 (last-token pooling, the Qwen3-Embedding-8B settings) and a 2-layer BERT
masked-LM checkpoint (mean pooling, served as its encoder: the BiomedBERT/PubMedBERT settings)
are built from configs, imported into a temporary Bento store through the export CLI (Qwen3 with
``python -m export vllm``, BERT by ``python -m export ensure`` from the registry's ``source``),
and served by one ``bentoml serve`` of a test registry (``EMBED_REGISTRY``); a second server on the
same Bento home shows that two servers leave each other's engines and metrics alone.
The references run the same weights in transformers: Qwen3 on a left-padded batch, taking the
last position, BERT with a masked mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from tokenizers import Tokenizer

from tests.support.servers import ROOT, process_tree, serve_process, stop_gracefully, wait_ready
from tests.support.tiny_models import tiny_bert_mlm, tiny_qwen3

pytestmark = pytest.mark.server

INSTRUCTION = "Instruct: Given a question, retrieve passages that answer it\nQuery:"
REGISTRY = f"""
models:
  tiny-qwen3:
    engine: vllm
    store_tag: tiny-qwen3
    pooling: last
    max_tokens: 32
    dimensions: 64
    matryoshka: {{min: 8, max: 64}}
    instructions: {{query: {json.dumps(INSTRUCTION)}}}
    vllm: {{dtype: float32, gpu_memory_utilization: 0.06, kv_cache_memory_bytes: 67108864, enforce_eager: true,
           hf_overrides: {{is_matryoshka: true}}}}
  tiny-bert:
    engine: vllm
    store_tag: tiny-bert
    source: BERT_FOLDER
    pooling: mean
    max_tokens: 48
    dimensions: 64
    vllm: {{dtype: float32, gpu_memory_utilization: 0.06, enforce_eager: true,
           hf_overrides: {{architectures: [BertModel]}}}}
profiles:
  tiny:
    models: [tiny-qwen3, tiny-bert]
    runners:
      vllm: {{resources: {{cpu: "2"}}}}
  tiny-bert:
    models: [tiny-bert]
"""
TEXTS = [
    "what is aspirin?",
    "Proteins fold into structures that determine their function.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "a",
]
LONG = "Embeddings map text to vectors; similar meanings land close together. " * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(url, folders, process, log) of a server for both tiny models from a temporary store."""
    root = tmp_path_factory.mktemp("vllm-tiny")
    folders = {"tiny-qwen3": tiny_qwen3(root / "qwen3"), "tiny-bert": tiny_bert_mlm(root / "bert")}
    (root / "registry.yaml").write_text(REGISTRY.replace("BERT_FOLDER", str(folders["tiny-bert"])))
    env = {"BENTOML_HOME": str(root / "bentoml"), "EMBED_REGISTRY": str(root / "registry.yaml"),
           "EMBED_PROFILE": "tiny"}
    qwen = ["--source", str(folders["tiny-qwen3"]), "--name", "tiny-qwen3", "--pooling", "last", "--revision", "test-1"]
    for command in (["vllm", *qwen, "--max-tokens", "32"], ["ensure"]):
        subprocess.run([sys.executable, "-m", "export", *command], cwd=ROOT, env={**os.environ, **env}, check=True)
    log = root / "serve.log"
    with serve_process(env, log) as (process, url):
        wait_ready(process, url, log, timeout=600)
        yield url, folders, process, log


@pytest.fixture(scope="module")
def http(tiny):
    with httpx.Client(base_url=tiny[0], timeout=60) as client:
        yield client


def embed(http, **payload) -> np.ndarray:
    response = http.post("/v1/embeddings", json=payload)
    assert response.status_code == 200, response.text
    return np.asarray([d["embedding"] for d in response.json()["data"]])


def tokenize(folder: Path, texts: list[str], max_tokens: int) -> list[list[int]]:
    """The gateway's tokenization: the folder's tokenizer.json, special tokens, no padding."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return [e.ids for e in tokenizer.encode_batch(texts)]


def reference(folder: Path, ids: list[list[int]], pooling: str) -> np.ndarray:
    """transformers on the same weights: Qwen3 left-padded taking the last position, BERT
    right-padded with a masked mean; L2-normalised."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    pad = int(model.config.pad_token_id or 0)
    width = max(map(len, ids))
    left = pooling == "last"
    rows = [([pad] * (width - len(x)) + x) if left else (x + [pad] * (width - len(x))) for x in ids]
    masks = [([0] * (width - len(x)) + [1] * len(x)) if left else ([1] * len(x) + [0] * (width - len(x))) for x in ids]
    input_ids, mask = torch.tensor(rows), torch.tensor(masks)
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    if left:
        pooled = hidden[:, -1]
    else:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    cos = np.sum(actual * expected, axis=1) / np.linalg.norm(actual, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.9999, cos
    assert np.abs(actual - expected).max() < 1e-3


def test_store_entries_record_source_and_revision(tiny):
    env = {**os.environ, "BENTOML_HOME": str(Path(tiny[3]).parent / "bentoml")}
    listed = subprocess.run(
        [sys.executable, "-m", "export", "list", "--json"], cwd=ROOT, env=env, check=True, capture_output=True,
        text=True,
    )
    entries = {e["tag"].split(":")[0]: e for e in json.loads(listed.stdout)}
    assert entries["tiny-qwen3"]["labels"]["engine"] == "vllm"
    assert entries["tiny-qwen3"]["metadata"]["source"] == str(tiny[1]["tiny-qwen3"])
    assert entries["tiny-qwen3"]["metadata"]["revision"] == "test-1"
    assert entries["tiny-qwen3"]["metadata"]["pooling"] == "last"
    assert entries["tiny-bert"]["metadata"]["source"] == str(tiny[1]["tiny-bert"])
    assert entries["tiny-bert"]["metadata"]["encoder_only"] is True  # from hf_overrides: BertModel


def test_qwen3_last_token_pooling_matches_left_padded_reference(tiny, http):
    folder = tiny[1]["tiny-qwen3"]
    expected = reference(folder, tokenize(folder, TEXTS, 32), "last")
    assert_close(embed(http, model="tiny-qwen3", input=TEXTS), expected)


def test_qwen3_dimensions_truncate_and_renormalise(tiny, http):
    folder = tiny[1]["tiny-qwen3"]
    full = reference(folder, tokenize(folder, TEXTS, 32), "last")
    cut = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    got = embed(http, model="tiny-qwen3", input=TEXTS, dimensions=16)
    assert got.shape == (len(TEXTS), 16)
    assert_close(got, cut)
    assert http.post("/v1/embeddings", json={"model": "tiny-qwen3", "input": "a", "dimensions": 4}).status_code == 400


def test_qwen3_query_instruction_and_its_override(tiny, http):
    folder = tiny[1]["tiny-qwen3"]
    queries = TEXTS[:2]
    instructed = reference(folder, tokenize(folder, [INSTRUCTION + q for q in queries], 32), "last")
    assert_close(embed(http, model="tiny-qwen3", input=queries, input_type="query"), instructed)
    plain = reference(folder, tokenize(folder, queries, 32), "last")
    assert_close(embed(http, model="tiny-qwen3", input=queries, input_type="document"), plain)  # no instruction
    own = "Instruct: Find code\nQuery:"
    overridden = reference(folder, tokenize(folder, [own + q for q in queries], 32), "last")
    assert_close(embed(http, model="tiny-qwen3", input=queries, input_type="query", instruction=own), overridden)
    assert_close(embed(http, model="tiny-qwen3", input=queries, input_type="query", instruction=""), plain)


def test_qwen3_long_input_truncates_or_is_refused(tiny, http):
    folder = tiny[1]["tiny-qwen3"]
    ids = tokenize(folder, [LONG], 32)
    assert len(ids[0]) == 32 and ids[0][-1] == Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(
        "<|endoftext|>")
    response = http.post("/v1/embeddings", json={"model": "tiny-qwen3", "input": LONG})
    assert response.json()["usage"]["prompt_tokens"] == 32
    assert_close(np.asarray([response.json()["data"][0]["embedding"]]), reference(folder, ids, "last"))
    refused = http.post("/v1/embeddings", json={"model": "tiny-qwen3", "input": LONG, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"


def test_bert_mean_pooling_matches_reference(tiny, http):
    folder = tiny[1]["tiny-bert"]
    texts = [*TEXTS, LONG]
    expected = reference(folder, tokenize(folder, texts, 48), "mean")
    response = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": texts})
    assert_close(np.asarray([d["embedding"] for d in response.json()["data"]]), expected)
    assert response.json()["usage"]["prompt_tokens"] == sum(map(len, tokenize(folder, texts, 48)))
    refused = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": LONG, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input"


def test_token_ids_outside_the_vocabulary_never_reach_the_engine(tiny, http):
    """vLLM's engine dies on an id past its embedding table; the gateway refuses it first."""
    response = http.post("/v1/embeddings", json={"model": "tiny-qwen3", "input": [5, 100000, 5]})
    assert response.status_code == 400
    assert embed(http, model="tiny-qwen3", input="still alive").shape == (1, 64)


def engine_cores(process) -> list[tuple[int, float]]:
    return [(p.pid, p.create_time()) for p in process_tree(process) if p.name().startswith("VLLM::EngineCor")]


def alive(processes: list[tuple[int, float]]) -> bool:
    return all(psutil.pid_exists(pid) and psutil.Process(pid).create_time() == started for pid, started in processes)


def requests_counted(url: str) -> float:
    """The server's ``embedding_requests_total`` of tiny-bert answered 200, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(
        "embedding_requests_total{") and 'model="tiny-bert"' in line and 'status="200"' in line)


def runner_ready(url: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith("embedding_runner_ready{")]


def embed_once(client: httpx.Client, text: str, timeout: float = 120) -> None:
    """One tiny-bert request answered 200 (503s, from a runner that a loaded machine kept from
    answering its probe in time, are retried: they are not counted as 200)."""
    deadline = time.monotonic() + timeout
    while (response := client.post("/v1/embeddings", json={"model": "tiny-bert", "input": text})).status_code == 503:
        assert time.monotonic() < deadline, response.text
        time.sleep(1)
    assert response.status_code == 200, response.text


def test_a_second_server_on_the_same_home_leaves_the_first_ones_engines_and_metrics_alone(tiny, http, tmp_path):
    """Issue 20: a second server on one Bento home killed the first one's live engine core (their
    process records were one file) and emptied its metrics directory: its /metrics lost its history,
    counted the second's requests and, once the second stopped, reported its runner not ready."""
    url, _, first, log = tiny
    first_cores = engine_cores(first)
    for _ in range(2):
        embed_once(http, "history the first server keeps")
    before = requests_counted(url)
    assert before >= 2 and len(first_cores) == 2
    env = {"BENTOML_HOME": str(Path(log).parent / "bentoml"), "EMBED_REGISTRY": str(Path(log).parent / "registry.yaml"),
           "EMBED_PROFILE": "tiny-bert"}
    second_log = tmp_path / "second.log"
    with serve_process(env, second_log) as (second, second_url), httpx.Client(base_url=second_url, timeout=60) as other:
        wait_ready(second, second_url, second_log, timeout=600)
        second_cores = engine_cores(second)
        for _ in range(3):
            embed_once(http, "to the first server")
        for _ in range(5):
            embed_once(other, "to the second server")
        assert alive(first_cores) and alive(second_cores) and len(second_cores) == 1
        assert requests_counted(url) == before + 3 and requests_counted(second_url) == 5
        assert "left by a worker that died" not in second_log.read_text()
    assert alive(first_cores) and requests_counted(url) == before + 3
    assert runner_ready(url) == ['embedding_runner_ready{runner="vllm"} 1.0'], runner_ready(url)
    embed_once(http, "still served")


def test_zz_shutdown_leaves_no_process(tiny, http):
    http.close()  # an open keep-alive connection would hold the gateway's graceful shutdown
    process = tiny[2]
    tree = process_tree(process)
    assert sum(p.name().startswith("VLLM::EngineCor") for p in tree) == 2  # one engine per model
    assert stop_gracefully(process, tree, timeout=90) == []

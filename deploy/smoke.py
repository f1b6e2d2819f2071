"""Smoke test of a running server: every model it serves, through the official OpenAI client.

    python deploy/smoke.py --url http://localhost:3000 [--api-key KEY] [--reference]

For each model in ``GET /v1/models``: one request with two texts (float and base64 encodings),
checking the shape (count, dimensions, finite values, unit norm when the model normalises) and
that both encodings agree. ``--reference`` also compares text-model vectors with this
checkout's own ONNX Runtime pipeline on the local Bento store (``BENTOML_HOME``): the gateway's
tokenizer and the runner's engine in-process; cosine >= 0.9999 per vector. Exit status 0 when
everything passed; one line per model either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors."]


def local_ort_vectors(model: str, texts: list[str]) -> np.ndarray:
    """``texts`` through this checkout's tokenizer + ONNX Runtime engine on the local store."""
    from gateway.preprocess import TextPreprocessor
    from models.registry import load_registry
    from models.store import open_entry
    from runners.ort.engine import OrtEngine

    spec = next(m for m in load_registry().models.values() if model in (m.name, *m.aliases))
    entry = open_entry(spec, required=("tokenizer.json", "model.onnx"))
    ids = TextPreprocessor(spec, entry).texts(texts, None, True)
    return np.stack(OrtEngine(spec, entry).embed(ids))


def check_model(client, model: dict, reference: bool) -> str:
    name, dims = model["id"], model["dimensions"]
    floats = client.embeddings.create(model=name, input=TEXTS, encoding_format="float")
    vectors = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert vectors.shape == (len(TEXTS), dims), f"shape {vectors.shape}, expected {(len(TEXTS), dims)}"
    assert np.isfinite(vectors).all(), "non-finite values"
    assert floats.usage.prompt_tokens > 0, "no usage"
    norms = np.linalg.norm(vectors, axis=1)
    # the SDK's default encoding (base64) must carry the same numbers
    b64 = np.array([d.embedding for d in client.embeddings.create(model=name, input=TEXTS).data], dtype=np.float32)
    assert np.allclose(b64, vectors, atol=1e-6), "base64 and float encodings differ"
    note = f"norms {norms.min():.4f}-{norms.max():.4f}"
    if reference and model.get("engine") == "ort" and model.get("pooling") != "multi":
        local = local_ort_vectors(name, TEXTS)
        cosine = (local * vectors).sum(1) / np.linalg.norm(local, axis=1) / norms
        assert cosine.min() >= 0.9999, f"cosine to the local ONNX Runtime output {cosine.min():.6f}"
        note += f", min cosine to local ORT {cosine.min():.6f}"
    return f"{name}: {dims} dims, {note}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:3000")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--reference", action="store_true", help="compare with the local ONNX Runtime output")
    args = parser.parse_args()

    import httpx
    from openai import OpenAI

    models = httpx.get(f"{args.url}/v1/models", headers={"Authorization": f"Bearer {args.api_key}"}, timeout=30)
    models.raise_for_status()
    client = OpenAI(base_url=f"{args.url}/v1", api_key=args.api_key, max_retries=0, timeout=120)
    failed = 0
    for model in models.json()["data"]:
        try:
            print("ok  ", check_model(client, model, args.reference), flush=True)
        except Exception as exc:  # report every model, then fail
            failed += 1
            print("FAIL", f"{model['id']}: {type(exc).__name__}: {exc}", flush=True)
    print(f"{len(models.json()['data']) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

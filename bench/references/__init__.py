"""Single-process reference servers for the benchmarks (``bench/scripts/overhead.py``): the same
engine as the platform's runner (``runners/ort/engine.py: OrtEngine`` on the registry model's store
entry: same ONNX file, session options and pooling) behind the least a Python front can be, so
the platform's per-request cost has something to be compared with.

- ``lean``: a raw ASGI callable on uvicorn (httptools, uvloop), orjson, one micro-batching queue
  in front of the session in one thread;
- ``naive``: uvicorn + Starlette, the session run once per request in a worker thread.

Both answer ``POST /v1/embeddings`` with one text (``{"model", "input": "text"}``) in the OpenAI
shape (float vectors), ``GET /health`` with 200; nothing else is checked (they are references,
not servers to deploy). Run: ``python -m bench.references.lean PORT MODEL [PROFILE]``.
"""

from __future__ import annotations

import orjson


def load(model: str, profile: str):
    """``(engine, tokenize)``: the registry model's ``OrtEngine`` and a function text -> int64 ids
    (the model's tokenizer: special tokens added, no padding, cut at ``max_tokens``)."""
    import numpy as np
    from tokenizers import Tokenizer

    from models.registry import served
    from models.store import open_entry
    from runners.ort.engine import OrtEngine

    spec = served(profile).find(model)
    entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
    tokenizer = Tokenizer.from_file(str(entry.file("tokenizer.json")))
    tokenizer.no_padding()
    tokenizer.enable_truncation(spec.max_tokens)
    return OrtEngine(spec, entry), lambda text: np.asarray(tokenizer.encode(text).ids, dtype=np.int64)


def answer(model: str, vector, tokens: int) -> bytes:
    return orjson.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                         "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        option=orjson.OPT_SERIALIZE_NUMPY)

"""``python -m export colqwen2`` on the tiny random ColQwen2, into a temporary Bento store: the
entry's files and metadata, and the runner's ColQwen2 engine on those graphs against PyTorch
(transformers' ColQwen2ForRetrieval through ColQwen2Processor) for queries and pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_export import cli, entries

pytestmark = pytest.mark.slow

BUCKETS = ("224x168", "168x224")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml_home_colqwen2")


@pytest.fixture(scope="module")
def exported(home: Path):
    result = cli(home, "colqwen2", "--source", "random:colqwen2-tiny", "--name", "cq-tiny",
                 "--bucket", BUCKETS[0], "--bucket", BUCKETS[1], "--max-tokens", "128")
    assert result.returncode == 0, result.stderr
    return result, entries(home)["cq-tiny"]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_entry_files_metadata_and_progress(exported):
    result, entry = exported
    path = Path(entry["path"])
    graphs = {"query/model.onnx", "page_224x168/model.onnx", "page_168x224/model.onnx"}
    assert graphs | {"tokenizer.json", "embedding.json"} <= {str(p.relative_to(path)) for p in path.rglob("*")}
    metadata = entry["metadata"]
    assert metadata["parity_query_max_rel_err"] < 1e-3 and metadata["parity_page_max_rel_err"] < 1e-3
    assert metadata["random_weights"] is True and entry["labels"]["weights"] == "random"
    assert metadata["buckets"] == list(BUCKETS)
    assert set(metadata["onnx_files_sha256"]) == graphs
    settings = json.loads((path / "embedding.json").read_text())
    assert settings["query_prefix"] == "Query: " and len(settings["query_suffix_ids"]) == 11
    assert [(b["height"], b["width"], b["tokens"]) for b in settings["buckets"]] == [(224, 168, 60), (168, 224, 60)]
    assert "[4/5] parity check" in result.stderr and "RANDOM WEIGHTS" in result.stdout


@pytest.mark.parametrize("bucket, message", [("100x100", "multiples of 28"), ("big", "is not HxW")])
def test_bad_buckets_are_refused(home: Path, bucket: str, message: str):
    result = cli(home, "colqwen2", "--source", "random:colqwen2-tiny", "--name", "x", "--bucket", bucket)
    assert result.returncode == 2 and message in result.stderr


def test_unknown_random_source_fails_clearly(home: Path):
    result = cli(home, "colqwen2", "--source", "random:colqwen9", "--name", "x", "--bucket", "56x56")
    assert result.returncode == 1 and "the only random model is random:colqwen2-tiny" in result.stderr


def test_engine_matches_pytorch_for_queries_and_pages(exported):
    """The runner's engine on a mixed batch (queries of different lengths, pages of both buckets)
    against the reference model, item by item: relative error < 1e-3 and unit rows."""
    import torch
    from PIL import Image, ImageDraw

    from export.colqwen2 import tiny_random
    from gateway.preprocess import VisionPreprocessor
    from models.registry import load_registry
    from models.store import StoreEntry
    from runners.ort.colqwen2 import ColQwen2Engine

    _, entry = exported
    path = Path(entry["path"])
    spec = load_registry().models["colqwen2-tiny-random"]
    store_entry = StoreEntry(tag=entry["tag"], path=path, metadata=entry["metadata"],
                             settings=json.loads((path / "embedding.json").read_text()))
    engine = ColQwen2Engine(spec, store_entry)
    preprocessor = VisionPreprocessor(spec, store_entry)
    model, processor = tiny_random()  # the same seed: the same weights as the export

    queries = ["Which page shows the quarterly revenue table?", "chart", "Ça coûte combien ?"]
    pages = []
    for i, (height, width) in enumerate([(224, 168), (168, 224), (224, 168)]):
        image = Image.new("RGB", (width, height), (255 - 60 * i, 250, 240))
        draw = ImageDraw.Draw(image)
        draw.rectangle((10, 20 + 10 * i, width - 30, 60 + 10 * i), fill=(20, 40 * i, 90))
        draw.text((12, 100), f"Page {i}: revenue 12.5%", fill=(0, 0, 0))
        pages.append(image)
    inputs = preprocessor.texts(queries, None, True) + [np.asarray(p) for p in pages]
    results = engine.embed(inputs)

    with torch.no_grad():
        expected = [model(**processor.process_queries([q])).embeddings[0].numpy() for q in queries]
        expected += [model(**processor.process_images([p])).embeddings[0].numpy() for p in pages]
    for ours, reference in zip(results, expected, strict=True):
        assert ours.shape == reference.shape and ours.shape[1] == 128
        assert relative_error(ours, reference) < 1e-3
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_ensure_refuses_an_entry_with_a_corrupt_page_graph(home: Path, exported, tmp_path: Path):
    """Runs last in this module: it damages the entry."""
    import yaml

    from tests.conftest import ROOT

    registry = yaml.safe_load((ROOT / "models" / "registry.yaml").read_text())
    registry["models"]["colqwen2-tiny-random"]["store_tag"] = "cq-tiny"
    registry["profiles"] = {"only-colqwen": {"models": ["colqwen2-tiny-random"]}}
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    env = {"EMBED_REGISTRY": str(tmp_path / "registry.yaml")}
    ok = cli(home, "ensure", "--profile", "only-colqwen", env=env)
    assert ok.returncode == 0 and "already in the store" in ok.stdout, ok.stderr
    graph = Path(exported[1]["path"]) / "page_168x224" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    broken = cli(home, "ensure", "--profile", "only-colqwen", env=env)
    assert broken.returncode == 1 and "page_168x224/model.onnx is corrupt" in broken.stderr

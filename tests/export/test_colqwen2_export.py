"""``python -m export colqwen2`` on the tiny random ColQwen2, into a temporary Bento store: the
entry's files and metadata, the runner's ColQwen2 engine on those graphs against the reference
(``ColQwen2Processor`` + Qwen2-VL with M-RoPE positions) for queries and pages of mixed sizes,
and ``ensure`` on entries of the older layout (re-exported) and with a corrupt graph (refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.export_cli import cli, entries, run
from tests.support.servers import ROOT

pytestmark = pytest.mark.server

GRAPHS = {"vision/model.onnx", "language/model.onnx"}
PIXELS = ("3136", "50176")  # the registry's colqwen2-tiny-random


@pytest.fixture(scope="module")
def exported(home: Path):
    result = cli(home, "colqwen2", "--source", "random:colqwen2-tiny", "--name", "cq-tiny",
                 "--min-pixels", PIXELS[0], "--max-pixels", PIXELS[1], "--max-tokens", "128")
    assert result.returncode == 0, result.stderr
    return result, entries(home)["cq-tiny"]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def test_entry_files_metadata_and_progress(exported):
    result, entry = exported
    path = Path(entry["path"])
    assert GRAPHS | {"tokenizer.json", "embedding.json"} <= {str(p.relative_to(path)) for p in path.rglob("*")}
    metadata = entry["metadata"]
    assert metadata["parity_query_max_rel_err"] < 1e-3 and metadata["parity_page_max_rel_err"] < 1e-3
    # transformers' ColQwen2ForRetrieval (1-D positions) is measurably not the reference
    assert metadata["parity_page_vs_1d_positions_rel_err"] > 1e-3
    assert metadata["random_weights"] is True and entry["labels"]["weights"] == "random"
    assert (metadata["min_pixels"], metadata["max_pixels"]) == (3136, 50176) and metadata["precision"] == "fp32"
    assert set(metadata["onnx_files_sha256"]) == GRAPHS
    settings = json.loads((path / "embedding.json").read_text())
    assert settings["layout"] == "vision+language/2"  # models/store.py: COLQWEN2_LAYOUT, what the runner feeds
    assert settings["query_prefix"] == "Query: " and len(settings["query_suffix_ids"]) == 11
    assert (settings["patch_size"], settings["merge_size"], settings["text_hidden_size"]) == (14, 2, 64)
    assert len(settings["page_prefix_ids"]) + len(settings["page_suffix_ids"]) == 12
    assert "[4/5] parity check" in result.stderr and "RANDOM WEIGHTS" in result.stdout


def test_bad_pixel_ranges_and_sources_fail_clearly(home: Path):
    swapped = cli(home, "colqwen2", "--source", "random:colqwen2-tiny", "--name", "x",
                  "--min-pixels", "50176", "--max-pixels", "3136")
    assert swapped.returncode == 2 and "--min-pixels must not exceed --max-pixels" in swapped.stderr
    unknown = cli(home, "colqwen2", "--source", "random:colqwen9", "--name", "x",
                  "--min-pixels", "3136", "--max-pixels", "50176")
    assert unknown.returncode == 1 and "the only random model is random:colqwen2-tiny" in unknown.stderr


def test_engine_matches_the_reference_for_queries_and_pages_of_mixed_sizes(exported):
    """The runner's engine on one mixed batch (queries of different lengths, pages of four
    aspect ratios resized by the gateway) against the reference, item by item."""
    from PIL import Image, ImageDraw

    from core.pages import resize_page
    from export.colqwen2 import Loaded, reference_pages, reference_queries, tiny_random
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
    loaded = Loaded(*tiny_random(), revision="", random_weights=True)  # the same seed: the export's weights

    queries = ["Which page shows the quarterly revenue table?", "chart", "Ça coûte combien ?"]
    pages = []
    for i, (width, height) in enumerate([(595, 842), (842, 595), (500, 500), (600, 200)]):
        image = Image.new("RGB", (width, height), (255 - 60 * i, 250, 240))
        draw = ImageDraw.Draw(image)
        draw.rectangle((10, 20 + 10 * i, width - 30, 60 + 10 * i), fill=(20, 40 * i, 90))
        draw.text((12, 100), f"Page {i}: revenue 12.5%", fill=(0, 0, 0))
        pages.append(image)
    resized = [resize_page(p, preprocessor.grid, "x") for p in pages]
    assert len({r.shape for r in resized}) == 4  # four page sizes, served in one call
    results = engine.embed(preprocessor.texts(queries, None, True) + resized)

    expected = reference_queries(loaded, queries) + reference_pages(loaded, pages)
    for ours, reference in zip(results, expected, strict=True):
        assert ours.shape == reference.shape and ours.shape[1] == 128
        assert relative_error(ours, reference) < 1e-3
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    for array, ours in zip(resized, results[len(queries):], strict=True):
        assert preprocessor.page_tokens(*array.shape[:2]) == len(ours)


def _registry_with(home: Path, store_tag: str) -> dict[str, str]:
    registry = yaml.safe_load((ROOT / "models" / "registry.yaml").read_text())
    registry["models"]["colqwen2-tiny-random"]["store_tag"] = store_tag
    registry["profiles"] = {"only-colqwen": {"models": ["colqwen2-tiny-random"]}}
    path = home / f"registry-{store_tag}.yaml"
    path.write_text(yaml.safe_dump(registry))
    return {"EMBED_REGISTRY": str(path)}


def test_ensure_exports_an_entry_of_the_old_layout_again(home: Path, tmp_path: Path):
    """An entry exported before the vision/language split (a query graph and one page graph per
    bucket) is outdated: ``ensure`` exports a new version beside it."""
    old = tmp_path / "old"
    for name in ("query/model.onnx", "page_224x168/model.onnx"):
        (old / name).parent.mkdir(parents=True)
        (old / name).write_bytes(b"an old graph")
    (old / "tokenizer.json").write_text("{}")
    (old / "embedding.json").write_text(json.dumps({"dimensions": 128, "buckets": [
        {"height": 224, "width": 168, "tokens": 60, "graph": "page_224x168/model.onnx"}]}))
    register = f"import pathlib, export.store as s; s.register('cq-old', pathlib.Path({str(old)!r}), {{}}, {{}})"
    assert run(home, ["-c", register]).returncode == 0
    env = _registry_with(home, "cq-old")
    done = cli(home, "ensure", "--profile", "only-colqwen", env=env)
    assert done.returncode == 0, done.stderr
    assert "outdated:" in done.stdout and "lacks vision/model.onnx, language/model.onnx" in done.stdout
    assert set(entries(home)["cq-old"]["metadata"]["onnx_files_sha256"]) == GRAPHS


def test_ensure_refuses_an_entry_with_a_corrupt_graph(home: Path, exported):
    """Runs last in this module: it damages the entry."""
    env = _registry_with(home, "cq-tiny")
    ok = cli(home, "ensure", "--profile", "only-colqwen", env=env)
    assert ok.returncode == 0 and "already in the store" in ok.stdout, ok.stderr
    graph = Path(exported[1]["path"]) / "language" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    broken = cli(home, "ensure", "--profile", "only-colqwen", env=env)
    assert broken.returncode == 1 and "language/model.onnx is corrupt" in broken.stderr

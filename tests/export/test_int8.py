"""int8: the quality gate's arithmetic, its data sets, static (QDQ) calibration through the CLI, the
TensorRT INT8 calibration table, and the refusal of a store entry made with other int8 settings.

The mechanics run on a tiny random BERT and on the gate's quick subset (``export/quality.py:
QUICK_GATE``); the full gate and the full sensitivity scan belong to ``python -m export
calibrate`` and ``python -m bench.scripts.int8_scan`` (docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

import corpora
from export import ExportError, calibration, quality
from models.registry import parse_registry
from models.schema import Int8Spec
from tests.support.export_cli import cli, entries, run, tiny_bert

# ---- the gate's arithmetic ------------------------------------------------------------------

def unit_rows(rng: np.random.Generator, rows: int, dims: int = 16) -> np.ndarray:
    vectors = rng.normal(size=(rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def labelled_set(passages: int, queries: int) -> quality.RetrievalSet:
    """Texts are placeholders: ``compare`` reads only the sizes and the labels (query i -> passage i)."""
    return quality.RetrievalSet(passages=tuple(f"p{i}" for i in range(passages)),
                                queries=tuple(f"q{i}" for i in range(queries)), relevant=tuple(range(queries)))


def test_identical_embeddings_pass_with_every_figure_at_fp32() -> None:
    rng = np.random.default_rng(0)
    rset = labelled_set(50, 10)
    vectors = unit_rows(rng, 60)
    same = quality.compare(vectors, vectors.copy(), rset)
    assert same.passed and same.failures() == []
    assert same.ndcg10 == same.ndcg10_fp32 and same.ndcg10_change == 0 and same.ndcg10_change_ci == (0.0, 0.0)
    assert same.mrr10_change == 0 and same.top10_overlap == 1 and same.same_top10 == 1
    assert same.mean_cosine == pytest.approx(1.0) and (same.texts, same.queries) == (60, 10)


def test_ndcg_and_mrr_follow_the_rank_of_the_relevant_passage() -> None:
    """Query i sits on passage i (rank 1); moving one query's relevant passage to rank 3 costs
    exactly 1 - 1/log2(4) of nDCG and 1 - 1/3 of reciprocal rank on that query."""
    rng = np.random.default_rng(1)
    passages = unit_rows(rng, 40, dims=64)
    queries = passages[:10].copy()  # each query equals its passage: rank 1 in fp32
    reference = np.vstack([passages, queries])
    candidate = reference.copy()
    # query 0 now points between passages 20 and 21, then 0: rank 3 for its relevant passage
    candidate[40] = (passages[20] + passages[21]) * 0.6 + passages[0] * 0.35
    candidate[40] /= np.linalg.norm(candidate[40])
    q = quality.compare(reference, candidate, labelled_set(40, 10))
    assert q.ndcg10_fp32 == pytest.approx(1.0) and q.mrr10_fp32 == pytest.approx(1.0)
    assert q.ndcg10 == pytest.approx((9 + 1 / np.log2(4)) / 10)
    assert q.mrr10 == pytest.approx((9 + 1 / 3) / 10)
    assert q.ndcg10_change == pytest.approx(q.ndcg10 - 1)
    low, high = q.ndcg10_change_ci
    assert low <= q.ndcg10_change <= high <= 0
    assert "nDCG@10 -5.00% against fp32" in " ".join(q.failures())
    assert "MRR@10 -6.67% against fp32" in " ".join(q.failures())


def test_overlap_and_cosine_criteria_fail_on_their_own() -> None:
    rng = np.random.default_rng(2)
    rset = labelled_set(200, 20)
    reference = unit_rows(rng, 220)
    noisy = quality.compare(reference, reference + rng.normal(scale=0.5, size=reference.shape).astype(np.float32), rset)
    assert not noisy.passed
    messages = " ".join(noisy.failures())
    assert "mean cosine to fp32" in messages and "mean top-10 overlap with fp32" in messages
    record = noisy.record()
    assert record["passed"] is False and record["thresholds"]["min_top10_overlap"] == 0.95
    json.dumps(record)  # store metadata: plain types only


def test_subset_keeps_each_query_with_its_relevant_passage() -> None:
    full = quality.load_retrieval_set()
    small = full.subset(*quality.QUICK_GATE)
    assert len(small.queries) == quality.QUICK_GATE[0] and len(small.passages) == quality.QUICK_GATE[1]
    for i, query in enumerate(small.queries):
        j = full.queries.index(query)
        assert small.passages[small.relevant[i]] == full.passages[full.relevant[j]]


# ---- the data sets --------------------------------------------------------------------------

def test_retrieval_set_is_labelled_deduplicated_and_apart_from_calibration() -> None:
    rows = [json.loads(line) for line in corpora.RETRIEVAL.read_text().splitlines()]
    docs = [r for r in rows if r["kind"] == "doc"]
    queries = [r for r in rows if r["kind"] == "query"]
    assert len(docs) >= 2000 and len(queries) >= 500
    assert len({d["id"] for d in docs}) == len(docs) and len({d["text"] for d in docs}) == len(docs)
    assert len({q["text"].lower() for q in queries}) == len(queries)
    assert {q["relevant"] for q in queries} <= {d["id"] for d in docs}
    assert len({q["relevant"] for q in queries}) == len(queries)  # one query per passage at most
    assert all(r["source"] for r in rows)
    calibration_texts = {json.loads(line)["text"] for line in corpora.CALIBRATION.read_text().splitlines()}
    assert len(calibration_texts) >= 512
    assert not calibration_texts & {r["text"] for r in rows}


def test_calibration_texts_refuse_the_gate_set(tmp_path: Path) -> None:
    rset = quality.load_retrieval_set()
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("my own text", rset.passages[3])))
    with pytest.raises(ExportError, match="1 of its first 2 texts are in the quality gate's retrieval set"):
        calibration.load_texts(path, 2, set(rset.texts))
    assert calibration.load_texts(path, 1, set(rset.texts)) == ["my own text"]
    with pytest.raises(ExportError, match="has 2 texts; 3 are asked for"):
        calibration.load_texts(path, 3, set())
    path.write_text('{"txt": "x"}\n')
    with pytest.raises(ExportError, match=r"mine.jsonl:1: not a JSON object with a \"text\" field"):
        calibration.load_texts(path, 1, set())


# ---- TensorRT INT8 calibration tables -------------------------------------------------------

def test_trt_table_holds_each_tensors_dynamic_range(tmp_path: Path) -> None:
    """ORT's table writer keeps max(lowest, highest); the table must hold the magnitude."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    ranges = TensorsData(CalibrationMethod.MinMax, {
        "a": TensorData(lowest=np.float32(-7.5), highest=np.float32(2.0)),
        "b": TensorData(lowest=np.float32(0.0), highest=np.float32(3.25)),
    })
    written = calibration.write_trt_table(ranges, tmp_path / "t")
    assert written == {"a": 7.5, "b": 3.25}
    assert calibration.read_trt_table(tmp_path / "t" / calibration.TRT_TABLE) == {"a": 7.5, "b": 3.25}
    assert (tmp_path / "t" / "calibration.cache").read_text().split("\n")[:2] == ["a 7.5", "b 3.25"]


CARD = {"name": "a test card", "memory_bytes": 25382879232, "headroom_bytes": 1073741824}  # a GPU profile's


def tensorrt_spec(cache: Path, **options) -> object:
    text = yaml.safe_dump({
        "models": {"m": {"engine": "ort", "store_tag": "m", "pooling": "mean", "max_tokens": 8, "dimensions": 4,
                         "ort": {"providers": [{"name": "tensorrt", "options": {
                             "trt_engine_cache_path": str(cache), **options}}, {"name": "cpu"}]}}},
        "profiles": {"p": {"models": ["m"], "gpu": CARD, "runners": {"ort": {"providers": ["tensorrt", "cpu"],
                                                                               "resources": {"gpu": 1}}}}}})
    return parse_registry(text).models["m"]


def test_trt_int8_table_location_follows_the_provider_options(tmp_path: Path) -> None:
    from export.commands.ensure import trt_table_problem

    assert calibration.trt_int8_table(tensorrt_spec(tmp_path)) is None
    spec = tensorrt_spec(tmp_path, trt_int8_enable=True, trt_int8_calibration_table_name="m.flatbuffers")
    assert calibration.trt_int8_table(spec) == tmp_path / "m.flatbuffers"
    assert "python -m export calibrate --model m --profile p" in trt_table_problem(spec, "p")
    (tmp_path / "m.flatbuffers").write_bytes(b"x")
    assert trt_table_problem(spec, "p") is None
    with pytest.raises(ExportError, match="trt_int8_enable needs trt_int8_calibration_table_name"):
        calibration.trt_int8_table(tensorrt_spec(tmp_path, trt_int8_enable=True))
    with pytest.raises(ExportError, match="writes ONNX Runtime's"):
        calibration.trt_int8_table(tensorrt_spec(tmp_path, trt_int8_enable=True, trt_int8_calibration_table_name="x",
                                                 trt_int8_use_native_calibration_table=True))


# ---- static int8 through the CLI ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny_bert_int8"), seed=0)


@pytest.fixture(scope="module")
def fp32_entry(home: Path, tiny: Path) -> dict:
    result = cli(home, "onnx", "--source", str(tiny), "--name", "tiny-fp32", "--max-tokens", "64")
    assert result.returncode == 0, result.stderr
    return entries(home)["tiny-fp32"]


@pytest.fixture(scope="module")
def minmax_entry(home: Path, tiny: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = cli(home, "calibrate", "--source", str(tiny), "--name", "tiny-minmax", "--max-tokens", "64",
                 "--texts", "20", "--gate-set", "quick", "--gate", "report")
    assert result.returncode == 0, result.stderr
    return result, entries(home)["tiny-minmax"]


def float_tensors(graph: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(graph)
    infos = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return [i.name for i in infos if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]


@pytest.mark.server
def test_calibrate_registers_static_int8_with_settings_gate_and_table(
    minmax_entry: tuple[subprocess.CompletedProcess[str], dict], fp32_entry: dict,
) -> None:
    result, entry = minmax_entry
    path, metadata = Path(entry["path"]), entry["metadata"]
    for label in ("calibrating on 20 texts (minmax)", "TensorRT INT8 calibration table", "static int8 quantization",
                  "quality gate against fp32 on retrieval.jsonl (first 100 queries, 500 passages)"):
        assert label in result.stderr
    assert " 100% (" in result.stderr  # progress within the calibration step
    assert "int8 static" in result.stdout and "quality gate " in result.stdout and "nDCG@10" in result.stdout

    assert metadata["precision"] == "int8"
    assert metadata["int8"] == {**Int8Spec(quantization="static").model_dump(mode="json", exclude_none=True),
                                "calibration_texts": 20}
    texts = [json.loads(line)["text"] for line in corpora.CALIBRATION.read_text().splitlines()][:20]
    assert metadata["calibration"]["texts"] == 20
    assert metadata["calibration"]["texts_sha256"] == calibration.texts_sha256(texts)
    gate = metadata["quality"]
    assert {"ndcg10", "ndcg10_fp32", "ndcg10_change", "ndcg10_change_ci", "mrr10", "mrr10_change", "top10_overlap",
            "mean_cosine", "same_top10", "passed", "thresholds"} <= gate.keys()
    assert gate["queries"] == 100 and gate["texts"] == 600 and isinstance(gate["passed"], bool)

    graph = onnx.load(str(path / "model.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MatMul") >= 8 and "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert metadata["onnx_sha256"] == hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()

    # the table belongs to the fp32 export of the same checkpoint (same graph, byte for byte)
    fp32_path = Path(fp32_entry["path"]) / "model.onnx"
    assert metadata["tensorrt_table"]["fp32_onnx_sha256"] == fp32_entry["metadata"]["onnx_sha256"]
    table = calibration.read_trt_table(path / "tensorrt" / calibration.TRT_TABLE)
    assert metadata["tensorrt_table"]["tensors"] == len(table)
    # min-max ranges, measured here independently: every float tensor of the fp32 graph as an
    # output, the same 20 texts in the same padded batches; the table holds max(|min|, |max|) of each
    import onnxruntime as ort

    fp32 = onnx.load(str(fp32_path))
    names = [n for n in float_tensors(fp32) if n in table]
    assert len(names) >= 0.9 * len(table) and "last_hidden_state" in names
    assert not set(table) & calibration.constant_tensors(fp32_path)  # weights: TensorRT takes no range for them
    mask = calibration.mask_tensors(fp32_path)
    assert mask and not set(table) & mask  # the additive mask stays in higher precision
    existing = {o.name for o in fp32.graph.output}
    fp32.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the tensors as exported
    session = ort.InferenceSession(fp32.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = calibration.Feeds(path / "tokenizer.json", texts, 64, calibration.input_names(fp32_path), batch=16)
    magnitude = dict.fromkeys(names, 0.0)
    for feed in feeds.feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            magnitude[name] = max(magnitude[name], float(np.abs(value).max()))
    for name in names:
        assert table[name] == pytest.approx(magnitude[name], rel=1e-5), name
    cache = dict(line.split(" ") for line in (path / "tensorrt" / "calibration.cache").read_text().splitlines())
    assert {k: float(v) for k, v in cache.items()} == pytest.approx(table)


@pytest.mark.server
def test_calibrate_scan_keeps_the_most_sensitive_matmuls_fp32(home: Path, tiny: Path) -> None:
    result = cli(home, "calibrate", "--source", str(tiny), "--name", "tiny-entropy", "--max-tokens", "64",
                 "--texts", "12", "--method", "entropy", "--scan", "2", "--gate-set", "quick", "--gate", "report")
    assert result.returncode == 0, result.stderr
    assert "calibrating on 12 texts (entropy)" in result.stderr and "sensitivity scan" in result.stderr
    metadata = entries(home)["tiny-entropy"]["metadata"]
    scanned = metadata["sensitivity"]
    assert len(scanned) == 12  # 2 layers x (Q, K, V, attention output, FFN up, FFN down)
    errors = [error for _, error in scanned]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0
    assert metadata["int8"]["calibration"] == "entropy"
    assert metadata["int8"]["keep_fp32"] == [node for node, _ in scanned[:2]]
    graph = onnx.load(str(Path(entries(home)["tiny-entropy"]["path"]) / "model.onnx"))
    dequantized = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in graph.graph.node}
    for node, _ in scanned[:2]:  # kept fp32: no dequantized input
        assert not set(by_name[node].input) & dequantized, node
    assert set(by_name[scanned[2][0]].input) & dequantized


@pytest.mark.server
def test_bad_calibrate_arguments_fail_clearly(home: Path, tiny: Path) -> None:
    result = cli(home, "calibrate", "--source", str(tiny), "--name", "tiny-bad", "--texts", "4",
                 "--keep-fp32", "/no/such/MatMul", "--gate-set", "quick")
    assert result.returncode == 1 and "keep_fp32 names nodes that are no quantizable MatMul" in result.stderr
    result = cli(home, "calibrate", "--source", str(tiny), "--name", "tiny-bad", "--percentile", "101")
    assert result.returncode == 2 and "percentile" in result.stderr
    result = cli(home, "calibrate", "--model", "all-MiniLM-L6-v2")
    assert result.returncode == 1 and "nothing to calibrate" in result.stderr
    assert "tiny-bad" not in entries(home)


def registry_file(folder: Path, tiny: Path, models: dict, providers: tuple[str, ...] = ("cpu",)) -> Path:
    """A registry serving ``models`` in profile ``p``, whose ORT runner may use ``providers``."""
    base = {"engine": "ort", "source": str(tiny), "pooling": "mean", "max_tokens": 64, "dimensions": 32}
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"models": {name: {**base, **spec} for name, spec in models.items()},
                                    "profiles": {"p": {"models": list(models), **({"gpu": CARD} if providers != ("cpu",)
                                                                                  else {}), "runners": {"ort": {
                                        "providers": list(providers),
                                        "resources": {"gpu": 1} if providers != ("cpu",) else {"cpu": "1"}}}}}}))
    return path


@pytest.mark.server
def test_registry_refuses_an_entry_made_with_other_int8_settings(
    home: Path, tiny: Path, minmax_entry: tuple[subprocess.CompletedProcess[str], dict], tmp_path: Path,
) -> None:
    static = {"quantization": "static", "calibration_texts": 20}
    registry = registry_file(tmp_path, tiny, {
        "same": {"store_tag": "tiny-minmax", "ort": {"precision": "int8", "int8": static}},
        "entropy": {"store_tag": "tiny-minmax", "ort": {"precision": "int8", "int8": {**static,
                                                                                     "calibration": "entropy"}}},
        "dynamic": {"store_tag": "tiny-minmax", "ort": {"precision": "int8"}},
        "kept": {"store_tag": "tiny-minmax", "ort": {"precision": "int8", "int8": {
            **static, "keep_fp32": ["/model/encoder/layer.0/output/dense/MatMul"]}}},
    })
    check = run(home, ["-c", """
import json
from models.registry import served
from models.store import OutdatedEntry, open_entry
out = {}
for spec in served("p").models:
    try:
        open_entry(spec, required=("model.onnx",))
        out[spec.name] = "ok"
    except OutdatedEntry as exc:
        out[spec.name] = str(exc)
print(json.dumps(out))
"""], env={"EMBED_REGISTRY": str(registry)})
    assert check.returncode == 0, check.stderr
    verdicts = json.loads(check.stdout)
    assert verdicts["same"] == "ok"
    assert "quantized with other int8 settings: calibration 'minmax' (registry: 'entropy')" in verdicts["entropy"]
    assert "quantization 'static' (registry: 'dynamic')" in verdicts["dynamic"]
    assert "keep_fp32 [] (registry: ['/model/encoder/layer.0/output/dense/MatMul'])" in verdicts["kept"]
    assert "python -m export ensure" in verdicts["kept"]


@pytest.mark.server
def test_calibrate_model_writes_a_tensorrt_table_where_the_provider_reads_it(
    home: Path, tiny: Path, fp32_entry: dict, tmp_path: Path,
) -> None:
    cache = tmp_path / "trt-cache"
    registry = registry_file(tmp_path, tiny, {"tiny-trt": {"store_tag": "tiny-fp32", "ort": {
        "int8": {"calibration_texts": 8},
        "providers": [{"name": "tensorrt", "options": {"trt_int8_enable": True, "trt_engine_cache_path": str(cache),
                                                        "trt_int8_calibration_table_name": "tiny.flatbuffers"}},
                      {"name": "cpu"}]}}}, providers=("tensorrt", "cpu"))
    env = {"EMBED_REGISTRY": str(registry)}
    ensure = cli(home, "ensure", "--profile", "p", env=env)
    assert ensure.returncode == 1
    assert f"reads its calibration table from {cache / 'tiny.flatbuffers'}, which is missing" in ensure.stderr
    result = cli(home, "calibrate", "--model", "tiny-trt", "--profile", "p", env=env)
    assert result.returncode == 0, result.stderr
    table = calibration.read_trt_table(cache / "tiny.flatbuffers")
    assert "last_hidden_state" in table and all(v > 0 for v in table.values())
    assert f"wrote {cache / 'tiny.flatbuffers'}: dynamic ranges of {len(table)} tensors" in result.stdout
    assert cli(home, "ensure", "--profile", "p", env=env).returncode == 0


def test_cli_lists_calibrate() -> None:
    out = subprocess.run([sys.executable, "-m", "export", "calibrate", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0
    for option in ("--method", "--texts", "--calibration-set", "--keep-fp32", "--scan", "--gate-set", "--model"):
        assert option in out.stdout


@pytest.mark.server
def test_ensure_builds_static_int8_from_the_registry_and_rebuilds_it_when_the_settings_change(
    home: Path, tiny: Path, tmp_path: Path,
) -> None:
    """ensure: the registry's static int8 model through the full gate; present and matching, it is
    checked and kept; after a settings change it is outdated and exported again."""
    int8 = {"quantization": "static", "calibration_texts": 16}
    env = {"EMBED_REGISTRY": str(registry_file(tmp_path, tiny, {"tiny-int8": {
        "store_tag": "tiny-int8", "ort": {"precision": "int8", "int8": int8}}}))}
    first = cli(home, "ensure", "--profile", "p", env=env)
    assert first.returncode == 0, first.stderr
    assert "quality gate against fp32 on retrieval.jsonl ..." in first.stderr  # the whole set, not a subset
    assert "quality gate passed" in first.stdout
    entry = entries(home)["tiny-int8"]
    assert entry["metadata"]["int8"]["calibration_texts"] == 16 and entry["metadata"]["quality"]["queries"] == 500
    again = cli(home, "ensure", "--profile", "p", env=env)
    assert again.returncode == 0 and f"already in the store as {entry['tag']} (unpinned; checked)" in again.stdout

    env = {"EMBED_REGISTRY": str(registry_file(tmp_path, tiny, {"tiny-int8": {
        "store_tag": "tiny-int8", "ort": {"precision": "int8", "int8": {**int8, "calibration": "entropy"}}}}))}
    changed = cli(home, "ensure", "--profile", "p", env=env)
    assert changed.returncode == 0, changed.stderr
    assert "outdated: model 'tiny-int8': store entry" in changed.stdout
    assert "calibration 'minmax' (registry: 'entropy')" in changed.stdout
    rebuilt = entries(home)["tiny-int8"]
    assert rebuilt["tag"] != entry["tag"] and rebuilt["metadata"]["int8"]["calibration"] == "entropy"

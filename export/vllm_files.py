"""Import a Hugging Face model folder for the vLLM runner: the checkpoint as it is, plus
``embedding.json``. No conversion: vLLM loads the weights itself.

A staged entry holds ``config.json``, the weights (``*.safetensors`` and their index, or
``pytorch_model*.bin`` when there are no safetensors), the tokenizer files, the
sentence-transformers files when present, and ``embedding.json`` (the same keys as ONNX
entries: ``pooling``, ``normalize``, ``max_tokens``, ``dimensions``, ``vocab_size``,
``pad_token_id``, ``uses_token_type_ids``). The gateway tokenizes with ``tokenizer.json``; a
folder without one (old BERT checkpoints ship only ``vocab.txt``) gets one converted by
transformers' fast tokenizer.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from export import ExportError
from export.onnx_text import COPIED_FILES, Settings, _pooling_config, _read_json

TOKENIZER_FILES = ("vocab.txt", "merges.txt", "vocab.json", "added_tokens.json", "tokenizer.model")


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files (safetensors preferred); ``ExportError`` if none."""
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("model.safetensors.index.json"))
    if not found:
        found = sorted(folder.glob("pytorch_model*.bin")) + sorted(folder.glob("pytorch_model.bin.index.json"))
    if not found:
        raise ExportError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return found


def stage(folder: Path, settings: Settings, out_dir: Path, encoder_only: bool = False) -> dict[str, Any]:
    """Copy the checkpoint into ``out_dir`` and write ``embedding.json``; returns its content.
    ``encoder_only``: keep only the base encoder's weights (see ``write_encoder_weights``).
    Raises ``ExportError`` when the folder lacks weights, a hidden size or a pad token."""
    if encoder_only:
        write_encoder_weights(folder, out_dir)
    else:
        for path in weight_files(folder):
            shutil.copy2(path, out_dir / path.name)
    for name in (*COPIED_FILES, *TOKENIZER_FILES, _pooling_config(folder)):
        if (folder / name).is_file():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():
        _convert_tokenizer(folder, out_dir)
    config = _read_json(folder / "config.json")
    dimensions = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
    if not dimensions:
        raise ExportError(f"{folder}: config.json has no hidden_size")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    pad_token_id = _pad_token_id(folder, config, tokenizer)
    embedding = {
        "pooling": settings.pooling,
        "normalize": settings.normalize,
        "max_tokens": settings.max_tokens,
        "dimensions": int(dimensions),
        "vocab_size": int(config.get("vocab_size") or tokenizer.get_vocab_size(True)),
        "pad_token_id": pad_token_id,
        "uses_token_type_ids": config.get("model_type") == "bert",
    }
    (out_dir / "embedding.json").write_text(json.dumps(embedding, indent=2) + "\n")
    return embedding


def write_encoder_weights(folder: Path, out_dir: Path) -> None:
    """Write ``model.safetensors`` holding only the base encoder of a task checkpoint such as
    BERT's ``BertForMaskedLM`` (BiomedBERT): the ``<base>.`` prefix (``bert.``) is removed, and
    the task heads (``cls.*``) and BERT's unused ``pooler.*`` are dropped. vLLM 0.32 serves such a
    checkpoint with ``hf_overrides: {architectures: [BertModel]}`` only in this form: its
    ``BertModel`` loader does not strip the prefix and fails on ``bert.*`` names."""
    import torch
    from safetensors.torch import load_file, save_file

    config = _read_json(folder / "config.json")
    prefix = f"{config.get('model_type', 'bert')}."
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        if path.name.endswith(".index.json"):
            continue
        tensors = (load_file(path) if path.suffix == ".safetensors"
                   else torch.load(path, map_location="cpu", weights_only=True))
        state.update(tensors)
    encoder = {
        name.removeprefix(prefix): tensor.contiguous()
        for name, tensor in state.items()
        if name.startswith(prefix) and not name.startswith(f"{prefix}pooler.")
    }
    if not encoder:
        raise ExportError(f"{folder}: no weights named {prefix}*: not a {prefix[:-1]} task checkpoint")
    save_file(encoder, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _pad_token_id(folder: Path, config: dict[str, Any], tokenizer: Any) -> int:
    if isinstance(config.get("pad_token_id"), int):
        return config["pad_token_id"]
    pad = (_read_json(folder / "tokenizer_config.json") or {}).get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad is not None and tokenizer.token_to_id(pad) is not None:
        return int(tokenizer.token_to_id(pad))
    raise ExportError(f"{folder}: no pad token in config.json or tokenizer_config.json")


def _convert_tokenizer(folder: Path, out_dir: Path) -> None:
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder}: no tokenizer.json and transformers cannot load a tokenizer: {exc}") from None
    if not tokenizer.is_fast:
        raise ExportError(f"{folder}: no tokenizer.json and the tokenizer cannot be converted to one")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        shutil.copy2(Path(tmp) / "tokenizer.json", out_dir / "tokenizer.json")

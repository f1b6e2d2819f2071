"""Export a Hugging Face text encoder to ONNX, check it against PyTorch, stage its files.

The ONNX contract (``runners/ort`` depends on it exactly):

- inputs ``input_ids`` int64 [batch, sequence], ``attention_mask`` int64 [batch, sequence],
  and ``token_type_ids`` int64 [batch, sequence] only when the model takes them;
- one output ``last_hidden_state`` float32 [batch, sequence, hidden]. No pooling in the graph.

A staged entry folder holds ``model.onnx``, ``tokenizer.json`` (copied as-is, so it may carry
fixed padding/truncation the consumer must disable), the tokenizer and model configs, the
sentence-transformers files when the source has them, and ``embedding.json`` (see
``write_embedding_json``).

This module imports torch and transformers; import it only when something is exported.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import transformers

from export import ExportError
from models.schema import Pooling
from runners.pooling import pool

POOLINGS = ("mean", "cls", "last")
PARITY_MIN_COSINE = 0.999
BERT_FAMILY = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "albert"}
BERT_MAX_TOKENS = 512
UNSET_MODEL_MAX_LENGTH = 10**6  # transformers writes int(1e30) when a tokenizer has no limit
ST_POOLING = {  # sentence-transformers pooling mode (6.x) or pooling_mode_<flag> (older) -> ours
    "mean": "mean",
    "mean_tokens": "mean",
    "cls": "cls",
    "cls_token": "cls",
    "lasttoken": "last",
}
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
)
SAMPLE_TEXTS = (
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar meanings land close together.",
    "Ça coûte 12,50 € à Zürich — naïve café résumé, ¿sí?",
    "def f(x):\n    return x ** 2  # code, numbers 3.14159 and symbols <>{}[]",
    "Aspirin irreversibly inhibits cyclooxygenase-1 and -2, reducing prostaglandin synthesis.",
    " ".join(["A long passage repeats clauses to pass one hundred and twenty-eight tokens,"] * 12),
    "Short query?",
)


@dataclass(frozen=True)
class Settings:
    """How the runner turns ``last_hidden_state`` into an embedding.

    ``pooling``: ``mean`` (masked mean), ``cls`` (first token) or ``last`` (last real token);
    ``normalize``: L2-normalise the pooled vector; ``max_tokens``: truncation length.
    """

    pooling: str
    normalize: bool
    max_tokens: int


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime CPU against PyTorch on ``SAMPLE_TEXTS``: the smallest cosine between
    pooled vectors, and the largest absolute difference of ``last_hidden_state`` at real
    (unmasked) token positions."""

    min_cosine: float
    max_abs_err: float


@dataclass(frozen=True)
class Loaded:
    """A checkpoint loaded for export: fp32 eval model with eager attention, its tokenizer,
    and the ONNX input names it takes (``input_ids``, ``attention_mask``[, ``token_type_ids``])."""

    model: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    input_names: tuple[str, ...]

    @property
    def dimensions(self) -> int:
        return int(self.model.config.hidden_size)


def resolve_settings(
    folder: Path, pooling: str | None = None, normalize: bool | None = None, max_tokens: int | None = None
) -> Settings:
    """Explicit values win; unset ones come from the checkpoint in ``folder``.

    A sentence-transformers folder (``modules.json``) gives the pooling of its Pooling module
    (``pooling_mode_*`` flags, or ``pooling_mode`` as sentence-transformers 6 writes it),
    ``normalize`` when it lists a ``Normalize`` module, and ``max_tokens`` from
    ``sentence_bert_config.json`` ``max_seq_length`` (sentence-transformers 6: the tokenizer's
    ``model_max_length``). Otherwise: mean pooling, normalised, and ``config.json``
    ``max_position_embeddings`` (at most 512 for BERT-family models). Raises ``ExportError``
    when an unset value cannot be derived.
    """
    modules = _read_json(folder / "modules.json") or []
    if normalize is None:
        normalize = any(m.get("type", "").endswith(".Normalize") for m in modules) if modules else True
    return Settings(
        pooling=pooling or _st_pooling(folder),
        normalize=normalize,
        max_tokens=int(max_tokens or (_st_max_tokens(folder) if modules else None) or _max_positions(folder)),
    )


def _st_pooling(folder: Path) -> str:
    config = _read_json(folder / _pooling_config(folder))
    if config is None:
        return "mean"
    if "pooling_mode" in config:
        modes = [config["pooling_mode"]]
    else:
        modes = [
            key.removeprefix("pooling_mode_")
            for key, on in config.items()
            if key.startswith("pooling_mode_") and on
        ]
    if len(modes) != 1 or modes[0] not in ST_POOLING:
        raise ExportError(f"{folder}: unsupported sentence-transformers pooling {config}; pass --pooling")
    return ST_POOLING[modes[0]]


def _st_max_tokens(folder: Path) -> int | None:
    st_config = _read_json(folder / "sentence_bert_config.json") or {}
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    limit = st_config.get("max_seq_length") or tokenizer_config.get("model_max_length")
    return limit if isinstance(limit, int) and limit < UNSET_MODEL_MAX_LENGTH else None


def _max_positions(folder: Path) -> int:
    config = _read_json(folder / "config.json") or {}
    positions = config.get("max_position_embeddings")
    if not positions:
        raise ExportError(f"{folder}: config.json has no max_position_embeddings; pass --max-tokens")
    return min(positions, BERT_MAX_TOKENS) if config.get("model_type") in BERT_FAMILY else positions


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def load(folder: Path) -> Loaded:
    """Load model and tokenizer from local ``folder`` only (no hub access), fp32, eval mode,
    eager attention (ORT's transformer optimizer fuses that form). Raises ``ExportError`` when
    transformers cannot load it."""
    transformers.utils.logging.disable_progress_bar()
    try:
        model = transformers.AutoModel.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager", local_files_only=True
        ).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder}: transformers cannot load it: {exc}") from None
    tokenizer.padding_side = "right"
    takes = inspect.signature(model.forward).parameters
    input_names = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in takes else ())
    return Loaded(model=model, tokenizer=tokenizer, input_names=input_names)


def check_settings(loaded: Loaded, settings: Settings) -> None:
    """Raise ``ExportError`` unless ``settings`` fit the model (pooling known, tokenizer has a
    pad token, ``max_tokens`` within the position table of absolute-position models)."""
    if settings.pooling not in POOLINGS:
        raise ExportError(f"pooling {settings.pooling!r} is not one of {', '.join(POOLINGS)}")
    if loaded.tokenizer.pad_token_id is None:
        raise ExportError("the tokenizer has no pad token; batches cannot be padded")
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if loaded.model.config.model_type in BERT_FAMILY and positions:
        limit = min(positions, BERT_MAX_TOKENS)
        if settings.max_tokens > limit:
            raise ExportError(f"max_tokens {settings.max_tokens} exceeds this model's limit of {limit}")


class _LastHiddenState(torch.nn.Module):
    """Calls the encoder with keyword arguments (positional ones collide in transformers 5)
    and returns only ``last_hidden_state``. Built in eval mode: the exporter restores the
    wrapper's mode afterwards, and a default (training) wrapper would re-enable dropout."""

    def __init__(self, model: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def export_onnx(loaded: Loaded, path: Path, opset: int = 17) -> None:
    """Write the ONNX graph to ``path`` (legacy TorchScript exporter, dynamic batch and
    sequence axes). The sample input is a padded batch so the attention mask stays in the graph."""
    encoded = _encode(loaded, SAMPLE_TEXTS[:2], max_tokens=64)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*loaded.input_names, "last_hidden_state")}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer and deprecation warnings are expected here; check_parity is the real guard.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _LastHiddenState(loaded.model),
            tuple(torch.from_numpy(encoded[name]) for name in loaded.input_names),
            str(path),
            input_names=list(loaded.input_names),
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def check_parity(loaded: Loaded, onnx_path: Path, settings: Settings) -> Parity:
    """Compare ONNX Runtime (CPU) with PyTorch on a right-padded batch of ``SAMPLE_TEXTS``
    (truncated at ``settings.max_tokens``, no fixed padding) and on one unpadded text.
    Raises ``ExportError`` if the graph breaks the input/output contract or the smallest
    cosine is below ``PARITY_MIN_COSINE``. Cosine is scale-free, so ``normalize`` is moot."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _check_contract(session, loaded.input_names)
    cosines, errors = [], []
    for texts in (SAMPLE_TEXTS, SAMPLE_TEXTS[2:3]):
        feeds = _encode(loaded, texts, settings.max_tokens)
        with torch.no_grad():
            expected = _LastHiddenState(loaded.model)(
                **{name: torch.from_numpy(array) for name, array in feeds.items()}
            ).numpy()
        (actual,) = session.run(["last_hidden_state"], feeds)
        mask = feeds["attention_mask"]
        errors.append(float(np.abs(actual - expected)[mask.astype(bool)].max()))
        a, b = (pool(states, mask, Pooling(settings.pooling)) for states in (actual, expected))
        cosines.extend(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    parity = Parity(min_cosine=float(min(cosines)), max_abs_err=max(errors))
    if parity.min_cosine < PARITY_MIN_COSINE:
        raise ExportError(
            f"parity check failed: min cosine {parity.min_cosine:.6f} < {PARITY_MIN_COSINE} "
            f"(max abs error {parity.max_abs_err:.3g}); not registering"
        )
    return parity


def _check_contract(session: ort.InferenceSession, input_names: tuple[str, ...]) -> None:
    inputs = [(i.name, i.type, len(i.shape)) for i in session.get_inputs()]
    outputs = [(o.name, o.type, len(o.shape)) for o in session.get_outputs()]
    if inputs != [(name, "tensor(int64)", 2) for name in input_names] or outputs != [
        ("last_hidden_state", "tensor(float)", 3)
    ]:
        raise ExportError(f"exported graph breaks the ONNX contract: inputs {inputs}, outputs {outputs}")


def _encode(loaded: Loaded, texts: tuple[str, ...], max_tokens: int) -> dict[str, np.ndarray]:
    """Right-padded to the longest text, truncated at ``max_tokens``: int64 [batch, sequence]
    per name in ``loaded.input_names`` (``token_type_ids`` zeros when the tokenizer gives none)."""
    encoded = loaded.tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_tokens, return_tensors="np"
    )
    arrays = {name: encoded[name].astype(np.int64) for name in encoded if name in loaded.input_names}
    if "token_type_ids" in loaded.input_names:
        arrays.setdefault("token_type_ids", np.zeros_like(arrays["input_ids"]))
    return arrays


def stage_files(loaded: Loaded, folder: Path, out_dir: Path) -> None:
    """Copy the tokenizer, model config and sentence-transformers files present in ``folder``
    into ``out_dir``; build ``tokenizer.json`` from the loaded (fast) tokenizer when absent."""
    for name in (*COPIED_FILES, _pooling_config(folder)):
        if (folder / name).is_file():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, out_dir / name)
    if not (out_dir / "tokenizer.json").is_file():
        if not loaded.tokenizer.is_fast:
            raise ExportError(f"{folder}: no tokenizer.json and the tokenizer cannot be converted to one")
        with tempfile.TemporaryDirectory() as tmp:
            loaded.tokenizer.save_pretrained(tmp)
            shutil.copy2(Path(tmp) / "tokenizer.json", out_dir / "tokenizer.json")


def _pooling_config(folder: Path) -> str:
    """Relative path of the sentence-transformers Pooling module's config.json."""
    modules = _read_json(folder / "modules.json") or []
    pooling_dir = next(
        (m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), "1_Pooling"
    )
    return f"{pooling_dir}/config.json"


def write_embedding_json(loaded: Loaded, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Write and return ``embedding.json``: ``pooling``, ``normalize``, ``max_tokens``,
    ``dimensions`` (hidden size), ``vocab_size`` (rows of the input embedding table: larger
    ids are invalid), ``pad_token_id``, ``uses_token_type_ids``."""
    embedding = {
        **asdict(settings),
        "dimensions": loaded.dimensions,
        "vocab_size": int(loaded.model.get_input_embeddings().num_embeddings),
        "pad_token_id": int(loaded.tokenizer.pad_token_id),
        "uses_token_type_ids": "token_type_ids" in loaded.input_names,
    }
    (out_dir / "embedding.json").write_text(json.dumps(embedding, indent=2) + "\n")
    return embedding

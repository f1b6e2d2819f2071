"""Finding and checking a registry model's entry in the Bento model store at start-up.

``open_entry(spec)`` returns the entry's folder and metadata, or raises ``StoreError`` with a
message that says what is wrong and which command fixes it. It checks that the entry exists
(``store_tag`` without a version means the latest), that its files are present, and that the
ONNX files' sha256 equal the ones recorded at export (``onnx_sha256`` for a text encoder's
``model.onnx``, ``onnx_files_sha256`` for the graphs of a ColQwen2 entry; a corrupt or truncated
copy fails here, not at the first request), and that an ONNX entry was exported with the
registry's ``ort.precision`` and ``ort.transformer_fusions`` (and, for int8, ``ort.int8``: static
or dynamic, calibration settings). An entry that lacks a file the code reads, or was exported
with other settings than the registry asks for, raises
``OutdatedEntry`` (a ``StoreError``): ``python -m export ensure`` exports a new version for it,
while a corrupt file stays an error a person has to look at.

Entry layout (what ``runner_files`` lists): a text encoder for ONNX Runtime holds ``model.onnx``,
one for vLLM ``config.json`` and its weights; a ColQwen2 entry holds ``VISION_GRAPH`` and
``LANGUAGE_GRAPH`` (an entry of the older layout, a query graph plus one page graph per bucket,
lacks them and is outdated); every entry holds ``tokenizer.json`` and ``embedding.json``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.registry import Int8Spec, ModelSpec


class StoreError(RuntimeError):
    """A registry model's store entry is missing, incomplete or corrupt."""


class OutdatedEntry(StoreError):
    """The entry lacks a file this code reads, or was exported with settings the registry no
    longer asks for (an older export layout, another precision): a new export fixes it.
    ``problem`` is the message without the fix."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


VISION_GRAPH = "vision/model.onnx"  # a ColQwen2 entry's vision encoder (export/colqwen2.py)
LANGUAGE_GRAPH = "language/model.onnx"  # its language model, shared by queries and pages
COLQWEN2_LAYOUT = "vision+language/2"  # embedding.json `layout`: the graphs' inputs as this code feeds them


def runner_files(spec: ModelSpec) -> tuple[str, ...]:
    """The entry files the runner of ``spec`` reads (what start-up and ``ensure`` check)."""
    if spec.vision is not None:
        return (VISION_GRAPH, LANGUAGE_GRAPH, "tokenizer.json")
    return ("model.onnx" if spec.engine.value == "ort" else "config.json", "tokenizer.json")


@dataclass(frozen=True)
class StoreEntry:
    tag: str
    path: Path
    metadata: dict[str, Any]
    settings: dict[str, Any]  # embedding.json: pooling, normalize, max_tokens, dimensions, ...

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_entry(
    spec: ModelSpec, required: tuple[str, ...] = ("tokenizer.json",), verify: bool = True
) -> StoreEntry:
    """The checked store entry of ``spec``; ``StoreError`` if missing or corrupt.

    ``required``: files the caller reads; ``verify``: check the ONNX file's sha256 (the runner
    does; the gateway, which reads only the tokenizer, does not)."""
    import bentoml
    from bentoml.exceptions import NotFound

    fix = ("run `python -m export ensure` "
           f"(or `python -m export onnx --source ... --name {spec.store_tag.split(':')[0]}`)")
    try:
        model = bentoml.models.get(spec.store_tag)
    except NotFound:
        raise StoreError(
            f"model {spec.name!r}: Bento store entry {spec.store_tag!r} is missing; {fix}"
        ) from None
    path = Path(model.path)
    entry_name = str(model.tag)
    missing = [name for name in (*required, "embedding.json") if not (path / name).is_file()]
    if missing:
        raise OutdatedEntry(f"model {spec.name!r}: store entry {entry_name} lacks {', '.join(missing)}", fix)
    metadata = dict(model.info.metadata)
    expected = metadata.get("onnx_sha256")
    onnx = path / "model.onnx"
    if verify and expected is not None:
        if not onnx.is_file():
            raise StoreError(f"model {spec.name!r}: store entry {entry_name} lacks model.onnx; {fix}")
        actual = sha256_of(onnx)
        if actual != expected:
            raise StoreError(
                f"model {spec.name!r}: {onnx} is corrupt (sha256 {actual[:12]}..., "
                f"recorded {expected[:12]}...); delete it with `bentoml models delete {entry_name}` and {fix}"
            )
    for name, recorded in (metadata.get("onnx_files_sha256") or {}).items() if verify else ():
        if not (path / name).is_file():
            raise StoreError(f"model {spec.name!r}: store entry {entry_name} lacks {name}; {fix}")
        actual = sha256_of(path / name)
        if actual != recorded:
            raise StoreError(
                f"model {spec.name!r}: {path / name} is corrupt (sha256 {actual[:12]}..., recorded "
                f"{recorded[:12]}...); delete it with `bentoml models delete {entry_name}` and {fix}"
            )
    exported = (metadata.get("precision", "fp32"), bool(metadata.get("transformer_fusions")))
    wanted = (spec.ort.precision, spec.ort.transformer_fusions)
    if spec.engine.value == "ort" and exported != wanted:
        raise OutdatedEntry(
            f"model {spec.name!r}: the registry wants precision {wanted[0]}, fusions {wanted[1]}; store "
            f"entry {entry_name} was exported with precision {exported[0]}, fusions {exported[1]}", fix
        )
    if spec.engine.value == "ort" and spec.ort.precision == "int8":
        # entries made before the int8 settings were recorded were dynamic with the defaults
        made = {**Int8Spec().model_dump(mode="json", exclude_none=True), **(metadata.get("int8") or {})}
        asked = spec.ort.int8.model_dump(mode="json", exclude_none=True)
        if made != asked:
            differ = ", ".join(f"{k} {made.get(k)!r} (registry: {asked.get(k)!r})"
                               for k in sorted({*made, *asked}) if made.get(k) != asked.get(k))
            raise OutdatedEntry(f"model {spec.name!r}: store entry {entry_name} was quantized with other int8 "
                                f"settings: {differ}", fix)
    settings = json.loads((path / "embedding.json").read_text())
    if spec.vision is not None and settings.get("layout") != COLQWEN2_LAYOUT:
        raise OutdatedEntry(f"model {spec.name!r}: store entry {entry_name} has graph layout "
                            f"{settings.get('layout')!r}, this code feeds {COLQWEN2_LAYOUT!r}", fix)
    if settings.get("dimensions") != spec.dimensions:
        raise StoreError(
            f"model {spec.name!r}: the registry says {spec.dimensions} dimensions, store entry "
            f"{entry_name} has {settings.get('dimensions')}; fix the registry or re-export the model"
        )
    return StoreEntry(tag=entry_name, path=path, metadata=metadata, settings=settings)


def declare_store_models(specs: tuple[ModelSpec, ...]):
    """Class decorator for a BentoML service: one ``BentoModel`` attribute per spec's store entry,
    so that ``bentoml build`` packs those entries into the bento. Nothing is resolved at import."""
    from bentoml.models import BentoModel

    def decorate(cls: type) -> type:
        for spec in specs:
            setattr(cls, f"store_model_{spec.store_tag.split(':')[0].replace('-', '_').replace('.', '_')}",
                    BentoModel(spec.store_tag))
        return cls

    return decorate

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

Pins (``ModelSpec.pin``, from the registry's lock): a pinned model's entry is the store version
whose content is the pinned content, whatever version is the latest (``store_model``). An
entry's content is the sha256 of every file it holds except BentoML's own ``model.yaml``
(``content_files``), and one digest over them (``content_digest``); the export records both in the
entry's metadata (``content``), so finding the pinned version reads metadata, not files.

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

from models.schema import Int8Spec, ModelSpec


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


BENTOML_FILES = frozenset({"model.yaml"})  # what BentoML writes into an entry: not the model's content
CONTENT = "content"  # metadata key: {"digest": content_digest(files), "files": content_files(folder)}


def content_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (an entry, or the folder an export registers), by
    relative POSIX path, except BentoML's own ``model.yaml``."""
    return {path.relative_to(folder).as_posix(): sha256_of(path) for path in sorted(folder.rglob("*"))
            if path.is_file() and path.relative_to(folder).as_posix() not in BENTOML_FILES}


def content_digest(files: dict[str, str]) -> str:
    """``sha256:<hex>`` over ``files`` (path -> sha256): the sha256 of ``sha256sum``'s output for
    them, sorted by path."""
    listing = "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def content_version(digest: str) -> str:
    """The store version an export registers its content under: the digest's first 16 hex digits,
    so the same content has the same version on every machine."""
    return digest.removeprefix("sha256:")[:16]


def entry_content(model: Any) -> dict[str, str]:
    """The content (path -> sha256) of store entry ``model``: recorded at export, or computed from
    its files for an entry exported before contents were recorded."""
    recorded = (model.info.metadata.get(CONTENT) or {}).get("files")
    return dict(recorded) if recorded else content_files(Path(model.path))


def content_difference(pinned: dict[str, str], actual: dict[str, str]) -> list[str]:
    """One line per file whose content differs between ``pinned`` and ``actual`` (path -> sha256)."""
    lines = []
    for path in sorted(set(pinned) | set(actual)):
        want, have = pinned.get(path), actual.get(path)
        if want == have:
            continue
        if have is None:
            lines.append(f"{path}: missing (pinned sha256 {want[:12]}...)")
        elif want is None:
            lines.append(f"{path}: not in the pin (sha256 {have[:12]}...)")
        else:
            lines.append(f"{path}: sha256 {have[:12]}..., pinned {want[:12]}...")
    return lines


def find_pinned(spec: ModelSpec) -> Any | None:
    """The store version of ``spec.store_name`` whose content is ``spec.pin``'s (the pin's own
    version tried first, then the newest first), or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    pin = spec.pin
    try:
        versions = bentoml.models.list(spec.store_name)
    except NotFound:
        return None
    versions.sort(key=lambda m: (str(m.tag.version) != pin.version, -m.info.creation_time.timestamp()))
    return next((model for model in versions if content_digest(entry_content(model)) == pin.digest), None)


def pin_missing_message(spec: ModelSpec) -> str:
    pin = spec.pin
    return (f"model {spec.name!r} is pinned (registry.lock) to content {pin.digest[:19]}... of store entry "
            f"{pin.store!r} (pinned from version {pin.version}, source {pin.source}, revision {pin.revision}); "
            f"no version in the store has it: run `python -m export ensure`, which exports it again and checks "
            f"the result is that content, or pin what the store has with `python -m export pin {spec.name}`")


def store_model(spec: ModelSpec) -> Any:
    """The BentoML model ``spec`` is served from: the pinned content's version, or (unpinned) the
    ``store_tag``'s (no version: the latest); ``StoreError`` with the fix when there is none."""
    import bentoml
    from bentoml.exceptions import NotFound

    if spec.pin is not None:
        model = find_pinned(spec)
        if model is None:
            raise StoreError(pin_missing_message(spec))
        return model
    try:
        return bentoml.models.get(spec.store_tag)
    except NotFound:
        raise StoreError(
            f"model {spec.name!r}: Bento store entry {spec.store_tag!r} is missing; run `python -m export ensure` "
            f"(or `python -m export onnx --source ... --name {spec.store_name}`)"
        ) from None


@dataclass(frozen=True)
class StoreEntry:
    tag: str
    path: Path
    metadata: dict[str, Any]
    settings: dict[str, Any]  # embedding.json: pooling, normalize, max_tokens, dimensions, ...

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def content_label(self) -> str:
        """The recorded content digest's first 12 hex digits (``unrecorded`` for an entry exported
        before contents were recorded): what ``embedding_model_info{content}`` shows."""
        digest = (self.metadata.get(CONTENT) or {}).get("digest")
        return digest.removeprefix("sha256:")[:12] if digest else "unrecorded"


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
    fix = ("run `python -m export ensure` "
           f"(or `python -m export onnx --source ... --name {spec.store_name}`)")
    model = store_model(spec)
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
    so that ``bentoml build`` packs those entries into the bento: a pinned model's exact version
    (the one holding its pinned content; ``StoreError`` when the store has none, so a build never
    packs other content), an unpinned one's ``store_tag``. Pins are resolved from the entries'
    metadata (no file is read)."""
    from bentoml.models import BentoModel

    def decorate(cls: type) -> type:
        for spec in specs:
            tag = str(store_model(spec).tag) if spec.pin is not None else spec.store_tag
            setattr(cls, f"store_model_{spec.name.lower().replace('-', '_').replace('.', '_')}", BentoModel(tag))
        return cls

    return decorate

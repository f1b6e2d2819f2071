"""Command line: ``python -m export {onnx,ensure,list}``.

- ``onnx --source SRC --name NAME [--pooling mean|cls|last] [--normalize/--no-normalize]
  [--max-tokens N] [--opset 17] [--revision R] [--fusions] [--precision fp32|int8]``: export one
  text encoder and register it. Unset options come from the checkpoint
  (``onnx_text.resolve_settings``). ``--fusions`` fuses transformer ops offline (parity-checked
  like the plain graph); ``--precision int8`` quantizes the graph and registers it only if it
  passes the quality gate against fp32 (``export/quality.py``).
- ``vllm --source SRC --name NAME [--pooling ...] [--normalize/--no-normalize] [--max-tokens N]
  [--revision R]``: import a Hugging Face checkpoint as it is for the vLLM runner (no
  conversion; ``export/vllm_files.py``) and register it with its source and revision.
- ``colqwen2 --source SRC --name NAME --min-pixels N --max-pixels N [--max-tokens N]``:
  export a ColQwen2 checkpoint (``hf:vidore/colqwen2-v1.0-hf``, a folder, or
  ``random:colqwen2-tiny``) as a vision-encoder graph and one language-model graph for queries
  and pages (``export/colqwen2.py``); pages are served between the given areas (the
  checkpoint's processor must say the same).
- ``ensure [--profile NAME]``: import every ``ort`` and ``vllm`` model the registry profile loads
  (its variants too) that the store lacks, with the registry's settings: a pinned one must come
  out as its pinned content, else ``ensure`` fails naming the difference; present ones are checked
  as the runners will check them at start-up (files, ONNX sha256, dimensions) and otherwise skipped.
- ``pin [MODEL ...] [--profile P] [--version V]``: pin models by content in the registry's lock
  (``registry.lock``; ``export/pins.py``): without names, every model the profile loads that is not
  pinned yet, to the version it serves now; a named one to ``--version`` or its latest version.
- ``list [--profile P] [--json]``: the store's entries by name: content digest, source, parity and
  quality figures, which registry models pin each and as which served name/variant it is served.

Progress lines (``[2/5] loading model ... (3.1 s)``) go to stderr, results to stdout.
Exit status: 0 done, 1 an export failed (the message says which and why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import bentoml

from export import ExportError, sources, store
from models.store import LANGUAGE_GRAPH, VISION_GRAPH, OutdatedEntry, StoreError, open_entry, runner_files, sha256_of

STEPS = 5


def exporter_versions() -> dict[str, str]:
    """The versions that produced an ONNX export (recorded in the store entry's metadata)."""
    return {dist: importlib.metadata.version(dist) for dist in ("torch", "transformers", "onnx", "onnxruntime")}


class Steps:
    """Numbered progress lines on stderr, each finished with its duration."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        self.done += 1
        print(f"[{self.done}/{self.total}] {label} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        outcome = " failed"
        try:
            yield
            outcome = ""
        finally:
            print(f"{outcome} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)


def export_model(
    source: str,
    name: str,
    *,
    revision: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_tokens: int | None = None,
    opset: int = 17,
    dimensions: int | None = None,
    fusions: bool = False,
    precision: str = "fp32",
    enforce_gate: bool = True,
) -> bentoml.Model:
    """Resolve ``source``, export it to ONNX, check parity and register it as ``name``.

    ``pooling``/``normalize``/``max_tokens`` left None come from the checkpoint's files;
    ``dimensions``, when given, must equal the model's hidden size. ``fusions``: fuse
    transformer ops (``ort_variants.fuse_transformer``); ``precision`` ``int8``: quantize and
    pass the quality gate (``enforce_gate=False`` registers a failing graph anyway, with
    ``quality.passed`` false in its metadata: for speed measurements only). Raises
    ``ExportError`` (nothing is registered then).
    """
    store.check_tag(name)
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision {precision!r} is not fp32 or int8")
    steps = Steps(STEPS + int(fusions) + int(precision == "int8"))
    with steps(f"resolving {source}"):
        resolved = sources.resolve(source, revision)
    with steps(f"loading {resolved.folder}"):
        from export import onnx_text

        settings = onnx_text.resolve_settings(resolved.folder, pooling, normalize, max_tokens)
        loaded = onnx_text.load(resolved.folder)
        onnx_text.check_settings(loaded, settings)
        if dimensions is not None and loaded.dimensions != dimensions:
            raise ExportError(f"the model has {loaded.dimensions} dimensions, the registry says {dimensions}")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        out_dir = Path(tmp) / "entry"
        out_dir.mkdir()
        with steps(f"exporting to ONNX (opset {opset})"):
            onnx_text.export_onnx(loaded, out_dir / "model.onnx", opset)
            onnx_text.stage_files(loaded, resolved.folder, out_dir)
            embedding = onnx_text.write_embedding_json(loaded, settings, out_dir)
        with steps("parity check: ONNX Runtime CPU vs PyTorch"):
            parity = onnx_text.check_parity(loaded, out_dir / "model.onnx", settings)
        variant: dict = {"precision": precision, "transformer_fusions": {}}
        if fusions or precision == "int8":
            fp32 = Path(tmp) / "fp32.onnx"
            (out_dir / "model.onnx").rename(fp32)
            current = fp32
        if fusions:
            with steps("fusing transformer ops, parity check again"):
                from export import ort_variants

                current = Path(tmp) / "fused.onnx"
                variant["transformer_fusions"] = ort_variants.fuse_transformer(
                    fp32, current, loaded.model.config.num_attention_heads, loaded.dimensions
                )
                parity = onnx_text.check_parity(loaded, current, settings)
        if precision == "int8":
            with steps("int8 quantization, quality gate against fp32"):
                from export import ort_variants, quality

                quantized = Path(tmp) / "int8.onnx"
                ort_variants.quantize_int8(current, quantized)
                gate = quality.gate(fp32, quantized, out_dir / "tokenizer.json", settings.pooling,
                                    settings.normalize, settings.max_tokens, enforce=enforce_gate)
                variant["quality"] = {key: round(value, 5) if isinstance(value, float) else value
                                      for key, value in asdict(gate).items()}
                variant["quality"]["passed"] = gate.passed
                current = quantized
        if fusions or precision == "int8":
            current.rename(out_dir / "model.onnx")
        with steps(f"registering {name}"):
            labels = {"engine": "ort", "format": "onnx", "task": "embedding", "pooling": settings.pooling}
            metadata = {
                "source": source,
                "revision": resolved.revision or "unknown",
                "engine": "ort",
                "pooling": settings.pooling,
                "normalize": settings.normalize,
                "dimensions": embedding["dimensions"],
                "max_tokens": settings.max_tokens,
                "opset": opset,
                "onnx_sha256": sha256_of(out_dir / "model.onnx"),
                "parity_min_cosine": parity.min_cosine,
                "parity_max_abs_err": parity.max_abs_err,
                **variant,
                "exported_with": exporter_versions(),
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} ({embedding['dimensions']} dims, {settings.pooling} pooling, "
        f"normalize={settings.normalize}, max_tokens={settings.max_tokens}; parity min cosine "
        f"{parity.min_cosine:.6f}, max abs err {parity.max_abs_err:.2e}; {precision}"
        + (f", fused {sum(variant['transformer_fusions'].values())} ops" if fusions else "")
        + (f", quality gate {'passed' if variant['quality']['passed'] else 'FAILED'}: {variant['quality']}"
           if "quality" in variant else "") + ")",
        flush=True,
    )
    return model


def export_colqwen2(
    source: str,
    name: str,
    pixels: tuple[int, int],
    *,
    max_tokens: int,
    revision: str | None = None,
    opset: int = 17,
) -> bentoml.Model:
    """Export a ColQwen2 checkpoint (vision-encoder graph + language-model graph), check parity
    with the reference for queries and for pages resized within ``pixels`` = (min, max) area, and
    register it as ``name``. Raises ``ExportError`` (nothing is registered then)."""
    store.check_tag(name)
    steps = Steps(STEPS)
    with steps(f"resolving and loading {source}"):
        from export import colqwen2

        loaded = colqwen2.load(source, revision, pixels)
    with steps("reading the processor's query and page prompts"):
        colqwen2.query_frame(loaded.processor)
        colqwen2.page_frame(loaded.processor)
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        out_dir = Path(tmp)
        with steps(f"exporting the vision encoder and the language model to ONNX (opset {opset})"):
            colqwen2.export_graphs(loaded, out_dir, opset)
            embedding = colqwen2.stage_files(loaded, out_dir, max_tokens, pixels)
        with steps("parity check: the runner's engine on ONNX Runtime CPU vs Qwen2-VL with M-RoPE (queries, pages)"):
            parity = colqwen2.check_parity(loaded, out_dir, embedding, pixels)
        with steps(f"registering {name}"):
            onnx_files = [VISION_GRAPH, LANGUAGE_GRAPH]
            labels = {"engine": "ort", "format": "onnx", "task": "multi-vector", "pooling": "multi",
                      "weights": "random" if loaded.random_weights else "checkpoint"}
            metadata = {
                "source": source,
                "revision": loaded.revision,
                "reference": "ColQwen2Processor + Qwen2-VL with input_ids, pixel_values, image_grid_thw and "
                             "mm_token_type_ids (M-RoPE positions, as colpali-engine)",
                "layout": embedding["layout"],
                "random_weights": loaded.random_weights,
                "engine": "ort",
                "pooling": "multi",
                "precision": "fp32",
                "dimensions": embedding["dimensions"],
                "max_tokens": max_tokens,
                "min_pixels": pixels[0],
                "max_pixels": pixels[1],
                "opset": opset,
                "onnx_files_sha256": {f: sha256_of(out_dir / f) for f in onnx_files},
                **parity,
                "exported_with": exporter_versions(),
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} (multi-vector x {embedding['dimensions']}, pages {pixels[0]}-{pixels[1]} pixels"
        f"{', RANDOM WEIGHTS' if loaded.random_weights else ''}; parity max relative error queries "
        f"{parity['parity_query_max_rel_err']:.2e}, pages {parity['parity_page_max_rel_err']:.2e}; transformers' "
        f"ColQwen2ForRetrieval (1-D positions) differs from the reference by up to "
        f"{parity['parity_page_vs_1d_positions_rel_err']:.2e})",
        flush=True,
    )
    return model


def import_vllm(
    source: str,
    name: str,
    *,
    revision: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_tokens: int | None = None,
    dimensions: int | None = None,
    encoder_only: bool = False,
) -> bentoml.Model:
    """Resolve ``source`` and register its checkpoint files for the vLLM runner as ``name``.

    Unset ``pooling``/``normalize``/``max_tokens`` come from the checkpoint's files as for ONNX
    exports; ``dimensions``, when given, must equal the config's hidden size; ``encoder_only``
    keeps only the base encoder of a masked-LM checkpoint (``vllm_files.write_encoder_weights``).
    Raises ``ExportError`` (nothing is registered then)."""
    from export import vllm_files
    from export.onnx_text import POOLINGS, resolve_settings

    store.check_tag(name)
    steps = Steps(3)
    with steps(f"resolving {source}"):
        resolved = sources.resolve(source, revision)
        settings = resolve_settings(resolved.folder, pooling, normalize, max_tokens)
        if settings.pooling not in POOLINGS:
            raise ExportError(f"pooling {settings.pooling!r} is not one of {', '.join(POOLINGS)}")
    with tempfile.TemporaryDirectory(prefix="import-") as tmp:
        out_dir = Path(tmp)
        with steps("staging the checkpoint, tokenizer and embedding.json"):
            embedding = vllm_files.stage(resolved.folder, settings, out_dir, encoder_only)
            if dimensions is not None and embedding["dimensions"] != dimensions:
                raise ExportError(f"the model has {embedding['dimensions']} dimensions, the registry says {dimensions}")
        with steps(f"registering {name}"):
            labels = {"engine": "vllm", "format": "hf", "task": "embedding", "pooling": settings.pooling}
            metadata = {
                "source": source,
                "revision": resolved.revision or "unknown",
                "engine": "vllm",
                "pooling": settings.pooling,
                "normalize": settings.normalize,
                "dimensions": embedding["dimensions"],
                "max_tokens": settings.max_tokens,
                "encoder_only": encoder_only,
                "weights": {p.name: sha256_of(p) for p in vllm_files.weight_files(out_dir)},
                "imported_with": {dist: importlib.metadata.version(dist) for dist in ("transformers", "tokenizers")},
            }
            model = store.register(name, out_dir, labels, metadata)
    print(
        f"registered {model.tag} for vllm ({embedding['dimensions']} dims, {settings.pooling} pooling, "
        f"normalize={settings.normalize}, max_tokens={settings.max_tokens}; revision {metadata['revision']})",
        flush=True,
    )
    return model


def ensure(profile: str | None) -> int:
    """Import the profile's missing ``ort`` and ``vllm`` models; returns the exit status.

    Every registry model the profile's runners load (its variants too) is checked. A pinned one
    (the registry's lock) whose content the store lacks is exported again, and the result must be
    the pinned content, else ``ensure`` fails naming the files and library versions that differ
    (the export is kept as a new version, to pin if the difference is wanted). An unpinned one is
    exported when the store lacks its ``store_tag``, with a warning that it is unpinned.

    An existing entry gets the checks the runner makes at start-up, so `make serve` stops here
    instead. An unpinned outdated one (an older export layout, other export settings) is exported
    again as a new version when the registry names no version; a corrupt one, or an outdated pinned
    one, is an error."""
    from export.pins import reproduced, warn_unpinned
    from models.registry import Pooling, RegistryError, served
    from models.store import find_pinned

    try:
        selection = served(profile)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_unpinned(selection.units)
    failures = []
    for spec in selection.units:
        existing = find_pinned(spec) if spec.pin is not None else store.find(spec.store_tag)
        if existing is not None:
            try:
                open_entry(spec, required=runner_files(spec))
            except StoreError as exc:
                # corrupt, a version the registry names, or the pinned content's entry: never replaced
                if spec.pin is not None:
                    problem = exc.problem if isinstance(exc, OutdatedEntry) else str(exc)
                    failures.append(f"{problem}; it holds the pinned content ({spec.pin.digest[:19]}...): delete it "
                                    f"(`bentoml models delete {existing.tag}`) and run `python -m export ensure` to "
                                    f"export it again, or pin another version (`python -m export pin {spec.name} "
                                    "--version V`)")
                    print(f"error: {failures[-1]}", file=sys.stderr, flush=True)
                    continue
                if not isinstance(exc, OutdatedEntry) or ":" in spec.store_tag:
                    failures.append(str(exc))
                    print(f"error: {failures[-1]}", file=sys.stderr, flush=True)
                    continue
                print(f"outdated: {exc.problem}; exporting a new version", flush=True)
            else:
                pinned = f"pinned content {spec.pin.digest[:19]}..." if spec.pin is not None else "unpinned"
                print(f"skip {spec.name}: already in the store as {existing.tag} ({pinned}; checked)", flush=True)
                continue
        if spec.pooling is Pooling.MULTI and spec.vision is None:
            print(f"skip {spec.name}: multi-vector export needs a `vision` section (ColQwen2)", flush=True)
            continue
        print(f"import {spec.name} from {spec.source} as {spec.store_tag}"
              + (f", to reproduce its pin {spec.pin.digest[:19]}..." if spec.pin is not None else ""), flush=True)
        try:
            model = export_spec(spec)
        except ExportError as exc:
            failures.append(f"model {spec.name} (source {spec.source}): {exc}")
            print(f"error: {failures[-1]}", file=sys.stderr, flush=True)
            continue
        if spec.pin is not None:
            if difference := reproduced(spec, model):
                failures.append(difference)
                print(f"error: {difference}", file=sys.stderr, flush=True)
            else:
                print(f"reproduced the pin of {spec.name}: {model.tag} is {spec.pin.digest[:19]}...", flush=True)
    if failures:
        print(f"{len(failures)} model(s) not ready to serve", file=sys.stderr)
    return 1 if failures else 0


def export_spec(spec) -> bentoml.Model:
    """Export or import registry model ``spec`` from its ``source`` with the registry's settings
    (``ExportError`` when it cannot)."""
    from models.registry import Engine

    if not spec.source:
        raise ExportError("the registry gives no source")
    if spec.vision is not None:
        return export_colqwen2(spec.source, spec.store_tag, (spec.vision.min_pixels, spec.vision.max_pixels),
                               max_tokens=spec.max_tokens, revision=spec.revision)
    if spec.engine is Engine.ORT:
        extra = {"fusions": spec.ort.transformer_fusions, "precision": spec.ort.precision}
    else:
        extra = {"encoder_only": spec.vllm.serves_encoder_only}
    return (export_model if spec.engine is Engine.ORT else import_vllm)(
        spec.source, spec.store_tag, **extra, revision=spec.revision, pooling=spec.pooling.value,
        normalize=spec.normalize, max_tokens=spec.max_tokens, dimensions=spec.dimensions,
    )


def pin_command(names: list[str], profile: str | None, version: str | None) -> int:
    from export.pins import pin
    from models.registry import RegistryError, load_registry, registry_path, served

    try:
        registry = load_registry()
        results = pin(registry, served(profile), names, version, registry_path())
    except (RegistryError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for result in results:
        print(f"{result.action}: {result.model} {result.detail}", file=sys.stderr if result.action == "failed"
              else sys.stdout, flush=True)
    return 1 if any(r.action == "failed" for r in results) else 0


def list_entries(as_json: bool, profile: str | None) -> int:
    """Every store entry, by store name, with its content digest, provenance, parity and quality
    figures, which registry models pin it and as which served name/variant the profile serves it;
    then the profile's models that the store lacks. ``as_json``: one JSON array of entries."""
    from export.pins import describe
    from models.registry import RegistryError, load_registry, served
    from models.store import StoreError, content_digest, entry_content, store_model

    try:
        registry, selection = load_registry(), served(profile)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serving: dict[str, list[str]] = {}  # tag -> served name/variant
    lacking = []
    for route in selection.routes.values():
        for variant in route.variants:
            try:
                tag = str(store_model(variant.spec).tag)
            except StoreError:
                lacking.append(variant.spec)
                continue
            serving.setdefault(tag, []).append(f"{route.model}/{variant.name}")
    rows = []
    for model in store.entries():
        digest = content_digest(entry_content(model))
        rows.append({
            "tag": str(model.tag),
            "path": model.path,
            "created": model.info.creation_time.isoformat(),
            "content_digest": digest,
            "pinned_by": sorted(s.name for s in registry.models.values() if s.pin and s.pin.digest == digest
                                and s.store_name == model.tag.name),
            "served_as": serving.get(str(model.tag), []),
            "labels": dict(model.info.labels),
            "metadata": {k: v for k, v in dict(model.info.metadata).items() if k != "content"},
        })
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("the model store is empty")
    name = None
    for row in rows:
        if row["tag"].split(":")[0] != name:
            name = row["tag"].split(":")[0]
            print(name)
        marks = [f"pinned by {', '.join(row['pinned_by'])}"] if row["pinned_by"] else []
        marks += [f"served ({selection.profile}) as {', '.join(row['served_as'])}"] if row["served_as"] else []
        print(f"  {row['tag'].split(':')[1]}  {row['created'][:19]}  {row['content_digest'][:19]}...  "
              f"{'; '.join(marks) or '-'}")
        print(f"      {describe(row['metadata'])}")
    for spec in dict.fromkeys(lacking):
        state = f"pinned to {spec.pin.digest[:19]}..." if spec.pin else "unpinned"
        print(f"missing: {spec.name} ({state}) is served in {selection.profile} but the store lacks it: "
              "`python -m export ensure`")
    for spec in selection.units:
        if spec.pin is None:
            print(f"unpinned: {spec.name} serves the latest {spec.store_tag}; `python -m export pin` pins it")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    onnx = commands.add_parser("onnx", help="export one Hugging Face text encoder to ONNX and register it")
    onnx.add_argument("--source", required=True, help="package:<python package>, hf:<hub id> or a folder")
    onnx.add_argument("--name", required=True, help="store name (name or name:version)")
    onnx.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    onnx.add_argument(
        "--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint"
    )
    onnx.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    onnx.add_argument("--opset", type=_positive_int, default=17)
    onnx.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    onnx.add_argument("--fusions", action="store_true", help="fuse transformer ops (onnxruntime.transformers)")
    onnx.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                      help="int8: dynamic quantization, registered only if it passes the quality gate")
    onnx.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                      help="report: register an int8 graph that fails the quality gate anyway, marked "
                      "quality.passed=false (for speed measurements only)")

    vllm = commands.add_parser("vllm", help="import one Hugging Face checkpoint for the vLLM runner")
    vllm.add_argument("--source", required=True, help="package:<python package>, hf:<hub id> or a folder")
    vllm.add_argument("--name", required=True, help="store name (name or name:version)")
    vllm.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    vllm.add_argument("--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint")
    vllm.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    vllm.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    vllm.add_argument(
        "--encoder-only", action="store_true",
        help="keep only the base encoder of a masked-LM checkpoint (served with architectures: [BertModel])",
    )

    ensure_cmd = commands.add_parser("ensure", help="import the profile's ort and vllm models missing from the store")
    ensure_cmd.add_argument("--profile", help="registry profile (default: $EMBED_PROFILE or cpu)")

    col = commands.add_parser("colqwen2", help="export a ColQwen2 checkpoint (vision encoder + language model)")
    col.add_argument("--source", required=True, help="hf:vidore/colqwen2-v1.0-hf, a folder, or random:colqwen2-tiny")
    col.add_argument("--name", required=True, help="store name (name or name:version)")
    col.add_argument("--min-pixels", type=_positive_int, required=True,
                     help="smallest page area after resizing (the processor's size.shortest_edge)")
    col.add_argument("--max-pixels", type=_positive_int, required=True,
                     help="largest page area after resizing (the processor's size.longest_edge)")
    col.add_argument("--max-tokens", type=_positive_int, default=768, help="query token limit")
    col.add_argument("--opset", type=_positive_int, default=17)
    col.add_argument("--revision", help="hub revision, or a label for a folder")

    pin_cmd = commands.add_parser("pin", help="pin models by content in the registry's lock (registry.lock)")
    pin_cmd.add_argument("models", nargs="*", help="registry models to pin (again); default: every model the "
                         "profile's runners load that is not pinned yet")
    pin_cmd.add_argument("--profile", help="registry profile (default: $EMBED_PROFILE or cpu)")
    pin_cmd.add_argument("--version", help="the store version to pin (one model); default: the latest")

    list_cmd = commands.add_parser("list", help="show the store's entries: versions, content, source, parity, "
                                   "quality, and which are pinned and served")
    list_cmd.add_argument("--profile", help="the profile whose served versions are marked (default: $EMBED_PROFILE "
                          "or cpu)")
    list_cmd.add_argument("--json", action="store_true", help="one JSON array with paths and metadata")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return list_entries(args.json, args.profile)
    if args.command == "pin":
        return pin_command(args.models, args.profile, args.version)
    if args.command == "ensure":
        return ensure(args.profile)
    try:
        if args.command == "colqwen2":
            if args.min_pixels > args.max_pixels:
                print("error: --min-pixels must not exceed --max-pixels", file=sys.stderr)
                return 2
            export_colqwen2(args.source, args.name, (args.min_pixels, args.max_pixels),
                            max_tokens=args.max_tokens, revision=args.revision, opset=args.opset)
            return 0
        common = dict(revision=args.revision, pooling=args.pooling, normalize=args.normalize,
                      max_tokens=args.max_tokens)
        if args.command == "vllm":
            import_vllm(args.source, args.name, encoder_only=args.encoder_only, **common)
        else:
            export_model(args.source, args.name, opset=args.opset, fusions=args.fusions, precision=args.precision,
                         enforce_gate=args.gate == "enforce", **common)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

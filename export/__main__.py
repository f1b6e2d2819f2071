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
- ``calibrate --source SRC --name NAME [--method minmax|entropy|percentile] [--texts N]
  [--calibration-set FILE.jsonl] [--keep-fp32 NODE ...] [--scan K] [--fusions] [--gate-set full|quick]``:
  static int8 (QDQ) calibrated on texts kept apart from the quality gate's, the most sensitive
  MatMuls kept fp32 (``--scan``: measured one by one), the TensorRT INT8 calibration table of the
  fp32 graph in the entry (``tensorrt/``), and the quality gate (``export/calibration.py``,
  ``export/quality.py``). ``calibrate --model NAME [--profile P]``: the same for a registry model
  with ``ort.int8.quantization: static``, or, for one whose TensorRT provider sets
  ``trt_int8_enable``, its calibration table where the provider reads it.
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
from pathlib import Path

import bentoml

from export import ExportError, hub, quality, sources, store
from models.schema import Int8Spec
from models.store import LANGUAGE_GRAPH, VISION_GRAPH, OutdatedEntry, StoreError, open_entry, runner_files, sha256_of

STEPS = 5
QUICK_QUERIES = quality.QUICK_GATE[0]
TRT_TABLE_DIR = "tensorrt"  # a static int8 entry's TensorRT calibration table (of its fp32 graph)
TRT_BATCH = 16  # texts per padded batch when a TensorRT table is calibrated


def exporter_versions() -> dict[str, str]:
    """The versions that produced an ONNX export (recorded in the store entry's metadata)."""
    return {dist: importlib.metadata.version(dist) for dist in ("torch", "transformers", "onnx", "onnxruntime")}


class Steps:
    """Numbered progress lines on stderr, each finished with its duration."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._shown = 0

    @contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        self.done += 1
        self._shown = 0
        print(f"[{self.done}/{self.total}] {label} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        outcome = " failed"
        try:
            yield
            outcome = ""
        finally:
            print(f"{outcome} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def progress(self, done: int, total: int) -> None:
        """Within a step: prints 25%, 50%, 75% and 100% as ``done`` of ``total`` passes them."""
        quarter = 4 * done // max(total, 1)
        if quarter > self._shown:
            self._shown = quarter
            print(f" {25 * quarter}%", end="", file=sys.stderr, flush=True)


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
    int8: Int8Spec | None = None,
    enforce_gate: bool = True,
    gate_set: quality.RetrievalSet | None = None,
    scan: int = 0,
) -> bentoml.Model:
    """Resolve ``source``, export it to ONNX, check parity and register it as ``name``.

    ``pooling``/``normalize``/``max_tokens`` left None come from the checkpoint's files;
    ``dimensions``, when given, must equal the model's hidden size. ``fusions``: fuse
    transformer ops (``ort_variants.fuse_transformer``); ``precision`` ``int8``: quantize as
    ``int8`` says (default: dynamic; ``export/calibration.py``) and pass the quality gate on
    ``gate_set`` (default the whole retrieval set; ``enforce_gate=False`` registers a failing
    graph anyway, with ``quality.passed`` false in its metadata: for speed measurements only).
    ``scan``: static int8 only: measure each MatMul's sensitivity and keep the ``scan`` most
    sensitive in fp32 besides ``int8.keep_fp32``. Raises ``ExportError`` (nothing is registered then).
    """
    store.check_tag(name)
    if precision not in ("fp32", "int8"):
        raise ExportError(f"precision {precision!r} is not fp32 or int8")
    int8 = int8 or Int8Spec()
    static = precision == "int8" and int8.quantization == "static"
    if scan and not static:
        raise ExportError("--scan measures static int8 (QDQ) layers; it needs static quantization")
    int8_steps = (4 + bool(scan)) if static else 2 if precision == "int8" else 0
    steps = Steps(STEPS + int(fusions) + int8_steps)
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
            quantized = Path(tmp) / "int8.onnx"
            variant.update(quantize(steps, fp32, current, quantized, out_dir, settings, int8, scan))
            with steps(f"quality gate against fp32 on {(gate_set or quality.load_retrieval_set()).name}"):
                gate = quality.gate(fp32, quantized, out_dir / "tokenizer.json", settings.pooling, settings.normalize,
                                    settings.max_tokens, enforce=enforce_gate, rset=gate_set)
            variant["quality"] = gate.record()
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
        + (f" {int8.quantization}" if precision == "int8" else "")
        + (f", fused {sum(variant['transformer_fusions'].values())} ops" if fusions else "") + ")"
        + (f"\nquality gate {'passed' if gate.passed else 'FAILED: ' + '; '.join(gate.failures())}: {gate.summary()}"
           if precision == "int8" else ""),
        flush=True,
    )
    return model


def quantize(steps: Steps, fp32: Path, graph: Path, target: Path, entry: Path, settings, int8: Int8Spec,
             scan: int) -> dict:
    """Write the int8 graph of ``graph`` (the fp32 export ``fp32``, or its fused form) to ``target``
    as ``int8`` says; static int8 also writes the TensorRT calibration table of ``fp32`` into
    ``entry``/``TRT_TABLE_DIR``. Returns the store metadata of what was done: ``int8`` (the settings,
    with the scan's nodes added to ``keep_fp32``) and, for static, ``calibration``,
    ``sensitivity`` (when scanned) and ``tensorrt_table``."""
    from export import calibration

    if int8.quantization == "dynamic":
        with steps("int8 dynamic quantization"):
            calibration.quantize_dynamic(graph, target, int8)
        return {"int8": int8.model_dump(mode="json", exclude_none=True)}
    tokenizer, work = entry / "tokenizer.json", target.parent
    texts = calibration.load_texts(int8.calibration_set, int8.calibration_texts,
                                   exclude=set(quality.load_retrieval_set().texts))
    record: dict = {}
    started = time.perf_counter()
    names = calibration.input_names(fp32)
    with steps(f"calibrating on {len(texts)} texts ({int8.calibration}), the MatMuls' inputs"):
        feeds = calibration.Feeds(tokenizer, texts, settings.max_tokens, names)
        ranges = calibration.collect_ranges(graph, feeds, int8, work, all_tensors=False, progress=steps.progress)
    record["calibration"] = {"set": str(int8.calibration_set or calibration.CALIBRATION_SET.name),
                             "texts": len(texts), "texts_sha256": calibration.texts_sha256(texts),
                             "tensors": len(ranges.data), "seconds": round(time.perf_counter() - started, 1)}
    with steps(f"TensorRT INT8 calibration table: every tensor of the fp32 graph, {TRT_BATCH} texts per padded batch"):
        table = trt_table(fp32, tokenizer, texts, settings.max_tokens, int8, entry / TRT_TABLE_DIR, work, steps)
        record["tensorrt_table"] = {"folder": TRT_TABLE_DIR, "files": list(calibration.TRT_FILES),
                                    "tensors": len(table), "fp32_onnx_sha256": sha256_of(fp32)}
    if scan:
        with steps(f"sensitivity scan: each of {len(calibration.matmul_nodes(graph))} MatMuls quantized alone"):
            def embed(path: Path):
                return quality.embed(path, tokenizer, texts, settings.pooling, settings.normalize, settings.max_tokens)

            errors = calibration.sensitivity_scan(graph, ranges, int8, embed, work, progress=steps.progress)
        record["sensitivity"] = [[node, float(f"{error:.4g}")] for node, error in errors]
        kept = tuple(dict.fromkeys([*int8.keep_fp32, *(node for node, _ in errors[:scan])]))
        int8 = int8.model_copy(update={"keep_fp32": kept})
        print("sensitivity (mean 1 - cosine to fp32 on the calibration texts, that MatMul alone in int8):",
              *(f"  {error:.5f}  {node}{'  (kept fp32)' if node in kept else ''}" for node, error in errors),
              sep="\n", file=sys.stderr, flush=True)
    with steps(f"static int8 quantization (QDQ, {len(int8.keep_fp32)} MatMuls kept fp32)"):
        calibration.quantize_static(graph, ranges, target, int8)
    return {**record, "int8": int8.model_dump(mode="json", exclude_none=True)}


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
    from models.registry import served
    from models.schema import Engine, Pooling, RegistryError
    from models.store import CONTENT, find_pinned

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
                if spec.pin is not None and CONTENT not in existing.info.metadata:
                    existing = store.register_again(existing)
                pinned = f"pinned content {spec.pin.digest[:19]}..." if spec.pin is not None else "unpinned"
                print(f"skip {spec.name}: already in the store as {existing.tag} ({pinned}; checked)", flush=True)
                continue
        if spec.pooling is Pooling.MULTI and spec.vision is None:
            print(f"skip {spec.name}: multi-vector export needs a `vision` section (ColQwen2)", flush=True)
            continue
        print(f"import {spec.name} from {spec.source} as {spec.store_tag}"
              + (f", to reproduce its pin {spec.pin.digest[:19]}..." if spec.pin is not None else ""), flush=True)
        try:
            if problem := hub.pin_problem(spec):  # the hub moved on since the pinned export
                raise ExportError(problem)
            # a pinned hub model is downloaded at the commit it was pinned from
            model = export_spec(spec, spec.pin.revision if spec.pin is not None and hub.is_hub(spec) else None)
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
    for spec in selection.for_engine(Engine.ORT):
        problem = trt_table_problem(spec, selection.profile)
        if problem:
            failures.append(problem)
            print(f"error: {problem}", file=sys.stderr, flush=True)
    if failures:
        print(f"{len(failures)} model(s) not ready to serve", file=sys.stderr)
    return 1 if failures else 0


def export_spec(spec, revision: str | None = None) -> bentoml.Model:
    """Export or import registry model ``spec`` from its ``source`` with the registry's settings, at
    ``revision`` (default: the registry's; ``ExportError`` when it cannot)."""
    from models.schema import Engine

    if not spec.source:
        raise ExportError("the registry gives no source")
    revision = revision or spec.revision
    if spec.vision is not None:
        return export_colqwen2(spec.source, spec.store_tag, (spec.vision.min_pixels, spec.vision.max_pixels),
                               max_tokens=spec.max_tokens, revision=revision)
    if spec.engine is Engine.ORT:
        extra = {"fusions": spec.ort.transformer_fusions, "precision": spec.ort.precision, "int8": spec.ort.int8}
    else:
        extra = {"encoder_only": spec.vllm.serves_encoder_only}
    return (export_model if spec.engine is Engine.ORT else import_vllm)(
        spec.source, spec.store_tag, **extra, revision=revision, pooling=spec.pooling.value,
        normalize=spec.normalize, max_tokens=spec.max_tokens, dimensions=spec.dimensions,
    )


def trt_table_problem(spec, profile: str) -> str | None:
    """Why ``spec``'s TensorRT INT8 setting cannot work (its calibration table is not named or not
    where the provider reads it), or None. TensorRT would fail at the first engine build."""
    from export.calibration import trt_int8_table

    try:
        table = trt_int8_table(spec)
    except ExportError as exc:
        return str(exc)
    if table is None or table.is_file():
        return None
    return (f"model {spec.name!r}: TensorRT INT8 reads its calibration table from {table}, which is missing; "
            f"write it with `python -m export calibrate --model {spec.name} --profile {profile}`")


def trt_table(graph: Path, tokenizer: Path, texts: list[str], max_tokens: int, int8: Int8Spec, folder: Path,
              work: Path, steps: Steps) -> dict[str, float]:
    """Calibrate every tensor of the fp32 ``graph`` on ``texts`` in padded batches and write the
    TensorRT INT8 calibration table files into ``folder``; returns the range per tensor."""
    from export import calibration

    feeds = calibration.Feeds(tokenizer, texts, max_tokens, calibration.input_names(graph), batch=TRT_BATCH)
    ranges = calibration.collect_ranges(graph, feeds, int8, work, all_tensors=True, progress=steps.progress)
    left_out = calibration.constant_tensors(graph) | calibration.mask_tensors(graph)
    return calibration.write_trt_table(ranges, folder, leave_out=left_out)


def calibrate_registry_model(name: str, profile: str | None, scan: int, enforce_gate: bool,
                             gate_set: quality.RetrievalSet | None) -> None:
    """``calibrate --model``: a static int8 registry model is exported again as the registry says
    (a new store version); a TensorRT model with ``trt_int8_enable`` gets its calibration table,
    computed from its fp32 store entry, where its provider options say. ``ExportError`` otherwise."""
    from export import calibration
    from models.registry import served
    from models.schema import Engine, RegistryError

    try:
        spec = served(profile).find(name)
    except RegistryError as exc:
        raise ExportError(str(exc)) from None
    if spec is None or spec.engine is not Engine.ORT or spec.vision is not None:
        raise ExportError(f"model {name!r} is no ONNX Runtime text encoder of profile {profile or 'cpu'}")
    table = calibration.trt_int8_table(spec)
    static = spec.ort.precision == "int8" and spec.ort.int8.quantization == "static"
    if not static and table is None:
        raise ExportError(f"model {name!r} has neither `ort: {{precision: int8, int8: {{quantization: static}}}}` "
                          "nor a tensorrt provider with trt_int8_enable: nothing to calibrate")
    if static:
        if not spec.source:
            raise ExportError(f"model {name!r}: the registry gives no source")
        export_model(spec.source, spec.store_tag.split(":")[0], revision=spec.revision,
                     pooling=spec.pooling.value, normalize=spec.normalize, max_tokens=spec.max_tokens,
                     dimensions=spec.dimensions, fusions=spec.ort.transformer_fusions, precision="int8",
                     int8=spec.ort.int8, enforce_gate=enforce_gate, gate_set=gate_set, scan=scan)
    if table is not None:
        entry = open_entry(spec, required=("model.onnx", "tokenizer.json"))
        int8 = spec.ort.int8
        texts = calibration.load_texts(int8.calibration_set, int8.calibration_texts,
                                       exclude=set(quality.load_retrieval_set().texts))
        steps = Steps(2)
        with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
            with steps(f"calibrating every tensor of {entry.tag} on {len(texts)} texts ({int8.calibration}), "
                       f"{TRT_BATCH} per padded batch"):
                written = trt_table(entry.file("model.onnx"), entry.file("tokenizer.json"), texts, spec.max_tokens,
                                    int8, Path(tmp) / "table", Path(tmp), steps)
            with steps(f"writing the TensorRT INT8 calibration table {table}"):
                calibration.copy_trt_table(Path(tmp) / "table", table)
        print(f"wrote {table}: dynamic ranges of {len(written)} tensors of {entry.tag} "
              f"(model.onnx sha256 {entry.metadata.get('onnx_sha256', '?')[:12]}...)", flush=True)


def pin_command(names: list[str], profile: str | None, version: str | None) -> int:
    from export.pins import pin
    from models.registry import load_registry, registry_path, served
    from models.schema import RegistryError

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
    from models.registry import load_registry, served
    from models.schema import RegistryError
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

    cal = commands.add_parser(
        "calibrate", help="static int8 (QDQ) calibrated on a text set, its TensorRT INT8 calibration table, the gate")
    target = cal.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="a registry model: a static int8 one is exported again as the registry says; "
                        "a TensorRT one with trt_int8_enable gets its calibration table")
    target.add_argument("--source", help="package:<python package>, hf:<hub id> or a folder (with --name)")
    cal.add_argument("--profile", help="with --model: the registry profile (default: $EMBED_PROFILE or cpu)")
    cal.add_argument("--name", help="with --source: store name (name or name:version)")
    cal.add_argument("--pooling", choices=("mean", "cls", "last"), help="default: from the checkpoint")
    cal.add_argument("--normalize", action=argparse.BooleanOptionalAction, help="default: from the checkpoint")
    cal.add_argument("--max-tokens", type=_positive_int, help="default: from the checkpoint")
    cal.add_argument("--revision", help="hub revision, package version, or a label for a folder")
    cal.add_argument("--fusions", action="store_true", help="quantize the fused graph (onnxruntime.transformers)")
    cal.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                     help="how activation ranges are computed from the calibration texts")
    cal.add_argument("--percentile", type=float, default=99.999, help="with --method percentile")
    cal.add_argument("--texts", type=_positive_int, default=128, help="calibration texts (the set's first N)")
    cal.add_argument("--calibration-set", help="a JSONL file of {\"text\": ...} rows (default: the project's "
                     "bench/datasets/calibration.jsonl)")
    cal.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                     help="one weight scale per output channel")
    cal.add_argument("--keep-fp32", action="append", default=[], metavar="NODE",
                     help="a MatMul node left in fp32; repeat")
    cal.add_argument("--scan", type=int, default=0, metavar="K",
                     help="measure each MatMul's sensitivity and keep the K most sensitive in fp32 too")
    cal.add_argument("--gate", choices=("enforce", "report"), default="enforce",
                     help="report: register a graph that fails the quality gate anyway, marked quality.passed=false")
    cal.add_argument("--gate-set", choices=("full", "quick"), default="full",
                     help=f"full: the whole retrieval set (as ensure); quick: its first {QUICK_QUERIES} queries, "
                     "for trying settings")

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


def calibrate(args: argparse.Namespace) -> int:
    """The ``calibrate`` command (``ExportError`` propagates to ``main``)."""
    from pydantic import ValidationError

    gate_set = quality.load_retrieval_set()
    if args.gate_set == "quick":
        gate_set = gate_set.subset(*quality.QUICK_GATE)
    if args.scan < 0:
        print("error: --scan is a count of MatMuls (>= 0)", file=sys.stderr)
        return 2
    if args.model:
        calibrate_registry_model(args.model, args.profile, args.scan, args.gate == "enforce", gate_set)
        return 0
    if not args.name:
        print("error: --source needs --name", file=sys.stderr)
        return 2
    try:
        int8 = Int8Spec(quantization="static", calibration=args.method, percentile=args.percentile,
                        calibration_texts=args.texts, calibration_set=args.calibration_set,
                        per_channel=args.per_channel, keep_fp32=tuple(args.keep_fp32))
    except ValidationError as exc:
        print(f"error: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    export_model(args.source, args.name, revision=args.revision, pooling=args.pooling, normalize=args.normalize,
                 max_tokens=args.max_tokens, fusions=args.fusions, precision="int8", int8=int8,
                 enforce_gate=args.gate == "enforce", gate_set=gate_set, scan=args.scan)
    return 0


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
        if args.command == "calibrate":
            return calibrate(args)
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

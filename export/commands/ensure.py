"""``python -m export ensure``: import every model a registry profile serves that the store
lacks (a pinned one must come out as its pinned content), and check the ones it has as the runners
will at start-up."""

from __future__ import annotations

import argparse
import sys

import bentoml

from export import ExportError, hub, store
from export.commands.colqwen2 import export_colqwen2
from export.commands.onnx import export_model
from export.commands.vllm import import_vllm
from models.store import OutdatedEntry, StoreError, open_entry, runner_files


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
    from models.registry import RegistryError, served
    from models.schema import Engine, Pooling
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


def run(args: argparse.Namespace) -> int:
    return ensure(args.profile)

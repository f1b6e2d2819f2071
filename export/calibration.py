"""int8 quantization of an exported text encoder: dynamic, or static (QDQ) calibrated on a text set;
the per-layer sensitivity scan; TensorRT INT8 calibration tables.

Everything here is ONNX Runtime's own quantization tooling (``onnxruntime.quantization``):

- ``collect_ranges``: run the fp32 graph on calibration texts, one text per run (no padding: a
  padded position's activations are not the model's and would widen the ranges), and compute each
  tensor's range by ``minmax``, ``entropy`` (KL-optimal threshold of a histogram) or
  ``percentile``. Texts are tokenized as the runner tokenizes them (truncation at ``max_tokens``).
- ``quantize_static``: QDQ graph with those ranges. Only MatMuls with a constant weight are
  quantized (the linear layers; int8 weights per output channel, uint8 activations): ONNX Runtime
  runs each as one ``MatMulIntegerToFloat`` (VNNI u8s8 on x86). Their outputs stay float (a
  quantized output adds a second rounding before the bias and residual additions, and measured
  worse); ``keep_fp32`` nodes stay fp32.
- ``quantize_dynamic``: the registry's earlier int8 (activation ranges measured per call).
- ``sensitivity_scan``: quantize one MatMul at a time and measure how far the embeddings of the
  calibration texts move from fp32 (mean 1 - cosine): the layers int8 hurts most.
- ``write_trt_table``: the ranges of every float tensor of the fp32 graph on the calibration
  texts in padded batches (TensorRT computes the attention mask's tensors too) as TensorRT's
  execution provider reads them (``trt_int8_enable``, ``trt_int8_calibration_table_name``):
  ``onnxruntime.quantization.write_calibration_table`` writes ``calibration.flatbuffers`` (the
  table the provider reads), ``calibration.cache`` and ``calibration.json``; each value is the
  tensor's dynamic range, max(|lowest|, |highest|). ``read_trt_table`` reads the flatbuffers file back.

Texts come from ``corpora/calibration.jsonl`` unless a JSONL file of ``{"text": ...}``
rows is given; a text that is also in the quality gate's retrieval set is refused, so the gate
never measures on what calibration saw.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

import corpora
from export import ExportError
from models.schema import Int8Spec, ModelSpec

CALIBRATION_SET = corpora.CALIBRATION
TRT_TABLE = "calibration.flatbuffers"  # the file TensorRT's execution provider reads (ORT's format)
TRT_FILES = (TRT_TABLE, "calibration.cache", "calibration.json")
MINMAX_TEXTS_PER_RUN = 16  # min-max reduces each tensor in the graph: texts of any length mix in one collect
MAX_RANGE = 1e6  # a wider tensor holds the mask's float minimum (masked scores), not an activation's values
Progress = Callable[[int, int], None]  # (done, total)


def load_texts(path: Path | None, count: int, exclude: set[str]) -> list[str]:
    """The first ``count`` texts of the JSONL file ``path`` (default ``CALIBRATION_SET``): one
    ``{"text": ...}`` object per line. ``ExportError`` when the file is missing or malformed, has
    fewer texts, or holds a text of ``exclude`` (the quality gate's set)."""
    path = Path(path) if path else CALIBRATION_SET
    if not path.is_file():
        raise ExportError(f"calibration set {path} is missing")
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError):
            raise ExportError(f"{path}:{number}: not a JSON object with a \"text\" field") from None
        if not isinstance(text, str) or not text.strip():
            raise ExportError(f"{path}:{number}: \"text\" is not a non-empty string")
        texts.append(text)
    if len(texts) < count:
        raise ExportError(f"calibration set {path} has {len(texts)} texts; {count} are asked for")
    texts = texts[:count]
    shared = [t for t in texts if t in exclude]
    if shared:
        raise ExportError(f"calibration set {path}: {len(shared)} of its first {count} texts are in the quality "
                          f"gate's retrieval set (for example {shared[0][:60]!r}); calibrate on other texts")
    return texts


def texts_sha256(texts: list[str]) -> str:
    """Identity of a calibration text list (recorded in the store metadata)."""
    import hashlib

    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


class Feeds:
    """Graph inputs for calibration texts, tokenized like the runner (truncation at ``max_tokens``):
    ``input_ids``, ``attention_mask`` and ``token_type_ids`` (zeros) when the graph takes it.

    ``batch`` 1: one unpadded text per run (the ranges of what the model computes for real
    tokens: what int8 MatMuls need). ``batch`` > 1: texts sorted by length in right-padded
    batches, as the runner sends them: the attention mask's padded positions then take part (what
    a TensorRT table needs: TensorRT runs every tensor of the graph, the mask's included)."""

    def __init__(self, tokenizer_path: Path, texts: list[str], max_tokens: int, input_names: set[str],
                 batch: int = 1) -> None:
        from tokenizers import Tokenizer

        from runners.ort.engine import padded_feed

        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        rows = [e.ids for e in tokenizer.encode_batch(texts)]
        if batch > 1:
            rows.sort(key=len)
        self.feeds = [padded_feed(rows[start : start + batch], pad_id, input_names)
                      for start in range(0, len(rows), batch)]

    def __len__(self) -> int:
        return len(self.feeds)


class _Reader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a slice of ``Feeds``."""

    def __init__(self, feeds: list[dict]) -> None:
        self.items: Iterator[dict] = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self.items, None)


def input_names(graph: Path) -> set[str]:
    import onnx

    return {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}


def collect_ranges(graph: Path, feeds: Feeds, spec: Int8Spec, work: Path, all_tensors: bool,
                   progress: Progress | None = None):
    """``TensorsData``: the range of each tensor of ``graph`` on ``feeds`` by ``spec.calibration``.
    ``all_tensors``: every float tensor (what a TensorRT table needs); else the inputs of MatMuls
    (what ``quantize_static`` reads). ``work``: a folder for the augmented graph.

    A min-max pass comes first: ORT's histogram collectors cannot bin a tensor that is constant
    on the calibration texts (an unpadded text's additive attention mask is all zeros), so those
    keep their exact min-max range, and ``entropy``/``percentile`` compute the others."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    op_types = None if all_tensors else ["MatMul"]
    minmax = _collect(graph, feeds, "minmax", spec, op_types, work, set(),
                      progress if spec.calibration == "minmax" else None)
    if spec.calibration == "minmax":
        return minmax
    odd = mask_tensors(graph) | {name for name, value in minmax.items() if not 0 < magnitude(value) <= MAX_RANGE}
    histogram = _collect(graph, feeds, spec.calibration, spec, op_types, work, odd, progress)
    method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[spec.calibration]
    return TensorsData(method, {**{name: minmax[name] for name in odd if name in minmax}, **dict(histogram.items())})


def magnitude(value) -> float:
    """max(|lowest|, |highest|) of one tensor's ``TensorData``."""
    lowest, highest = value.range_value
    return float(np.max(np.maximum(np.abs(lowest), np.abs(highest))))


def mask_tensors(graph: Path) -> set[str]:
    """Tensors of ``graph`` computed from the ``attention_mask`` input and constants alone: the
    additive mask (0 or the float minimum) and its steps. Constant on an unpadded text, and of no
    use as an int8 range (TensorRT keeps them in higher precision when the table leaves them out)."""
    import onnx

    model = onnx.load(str(graph))
    known = {i.name for i in model.graph.initializer}
    derived = {"attention_mask"}
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if any(name in derived for name in inputs) and all(name in derived or name in known for name in inputs):
            derived.update(node.output)
        elif all(name in known for name in inputs):
            known.update(node.output)
    return derived - {"attention_mask"}


def _collect(graph: Path, feeds: Feeds, method: str, spec: Int8Spec, op_types: list[str] | None, work: Path,
             skip: set[str], progress: Progress | None):
    """One calibrator of ORT's over ``feeds``, leaving out the tensors in ``skip``; its defaults as
    ``create_calibrator`` sets them (entropy: 128 bins; percentile: symmetric, 2048 bins)."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    augmented = str(work / f"augmented-{method}.onnx")
    with _quiet():
        if method == "minmax":
            calibrator = MinMaxCalibrater(graph, op_types, augmented)
        elif method == "entropy":
            calibrator = EntropyCalibrater(graph, op_types, augmented, num_bins=128, num_quantized_bins=128)
        else:
            calibrator = PercentileCalibrater(graph, op_types, augmented, symmetric=True, num_bins=2048,
                                              percentile=spec.percentile)
        select = calibrator.select_tensors_to_calibrate

        def selected(model):
            tensors, value_infos = select(model)
            return tensors - skip, value_infos

        calibrator.select_tensors_to_calibrate = selected
        calibrator.augment_graph()
        calibrator.create_inference_session()
    # the histogram collectors stack one run's outputs per call, so shapes must agree: one text per call
    step = MINMAX_TEXTS_PER_RUN if method == "minmax" else 1
    for start in range(0, len(feeds), step):
        with _quiet():
            calibrator.collect_data(_Reader(feeds.feeds[start : start + step]))
        if progress:
            progress(min(start + step, len(feeds)), len(feeds))
    with _quiet():
        return calibrator.compute_data()


def matmul_nodes(graph: Path) -> list[str]:
    """Names of ``graph``'s MatMul nodes whose second input is a constant: the linear layers, in
    graph order (what ``quantize_static`` quantizes)."""
    import onnx

    model = onnx.load(str(graph))
    constants = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def quantize_static(graph: Path, ranges, target: Path, spec: Int8Spec, keep_fp32: tuple[str, ...] | None = None,
                    only: str | None = None) -> None:
    """Write the QDQ graph of ``graph`` with activation ranges ``ranges`` to ``target``.
    ``keep_fp32`` (default ``spec.keep_fp32``): MatMul nodes left fp32; ``only``: quantize just
    this MatMul (the sensitivity scan). ``ExportError`` when a ``keep_fp32`` name is not a
    quantizable MatMul of the graph (a typo would silently quantize it).

    ORT's QDQ quantizer hands the dequantized tensor to every consumer of a quantized tensor, the
    residual additions and the MatMuls kept fp32 included. So first each quantized MatMul's input
    is given a copy of its own (``_isolate``): only the quantized MatMuls read rounded values."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    keep = spec.keep_fp32 if keep_fp32 is None else keep_fp32
    nodes = matmul_nodes(graph)
    unknown = sorted(set(keep) - set(nodes))
    if unknown:
        raise ExportError(f"keep_fp32 names nodes that are no quantizable MatMul of the graph: {unknown}")
    quantized = [only] if only else [n for n in nodes if n not in keep]
    if not quantized:  # an empty list would mean "every node" to the quantizer
        raise ExportError("keep_fp32 keeps every MatMul in fp32: nothing is left to quantize")
    with _quiet():
        model = load_model_with_shape_infer(graph)
        ranges = _isolate(model, set(quantized), ranges)
        quantizer = QDQQuantizer(
            model, spec.per_channel, False, QuantType.QInt8, QuantType.QUInt8, ranges, quantized, [], ["MatMul"],
            {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"],
             # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference
             "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        quantizer.quantize_model()
        quantizer.model.save_model_to_file(str(target), False)


QUANTIZED_COPY = "_int8_input"  # suffix of the tensor a quantized MatMul reads (``_isolate``)


def _isolate(model, quantized: set[str], ranges):
    """Give the MatMuls in ``quantized`` their activation input through an ``Identity`` of its own
    (``<tensor>_int8_input``, shared by the quantized MatMuls that read the same tensor), so the
    tensor's other consumers keep reading it unrounded; returns ``ranges`` with each copy's range
    (its source's). ONNX Runtime removes the Identity nodes when it loads the graph."""
    import onnx
    from onnxruntime.quantization.calibrate import TensorsData

    graph = model.graph
    value_infos = {v.name: v for v in graph.value_info}
    copies = {n.input[0]: n.input[0] + QUANTIZED_COPY for n in graph.node if n.name in quantized}
    data = dict(ranges.items())
    nodes, placed = [], set()
    for node in graph.node:
        for source in node.input:  # the copy goes right before the tensor's first consumer
            if source in copies and source not in placed:
                placed.add(source)
                nodes.append(onnx.helper.make_node("Identity", [source], [copies[source]], name=copies[source]))
                if source in value_infos:
                    info = graph.value_info.add()
                    info.CopyFrom(value_infos[source])
                    info.name = copies[source]
                if source in data:
                    data[copies[source]] = data[source]
        if node.name in quantized:
            node.input[0] = copies[node.input[0]]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return TensorsData(ranges.calibration_method, data)


def quantize_dynamic(graph: Path, target: Path, spec: Int8Spec) -> None:
    """Write the dynamically quantized graph (int8 weights, per output channel when
    ``spec.per_channel``; uint8 activations quantized per call) with ``spec.keep_fp32`` left fp32."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    unknown = sorted(set(spec.keep_fp32) - set(matmul_nodes(graph)))
    if unknown:
        raise ExportError(f"keep_fp32 names nodes that are no quantizable MatMul of the graph: {unknown}")
    with _quiet():
        ort_quantize_dynamic(
            str(graph), str(target), per_channel=spec.per_channel, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(spec.keep_fp32),
            # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX shape inference
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def sensitivity_scan(graph: Path, ranges, spec: Int8Spec, embed: Callable[[Path], np.ndarray], work: Path,
                     progress: Progress | None = None) -> list[tuple[str, float]]:
    """(MatMul node, error) for every quantizable MatMul of ``graph``, most sensitive first, where
    error is the mean 1 - cosine between fp32's embeddings and those of the graph with only that
    node quantized (``embed(graph_path)``: the calibration texts' embeddings)."""
    reference = embed(graph)
    nodes = matmul_nodes(graph)
    errors = []
    for done, node in enumerate(nodes, 1):
        candidate = work / "scan.onnx"
        quantize_static(graph, ranges, candidate, spec, keep_fp32=(), only=node)
        vectors = embed(candidate)
        cosine = np.sum(reference * vectors, axis=1) / (
            np.linalg.norm(reference, axis=1) * np.linalg.norm(vectors, axis=1))
        errors.append((node, float(np.mean(1 - cosine))))
        if progress:
            progress(done, len(nodes))
    return sorted(errors, key=lambda item: -item[1])


def symmetric(ranges):
    """``ranges`` with each tensor's range made symmetric, [-m, m], m = max(|lowest|, |highest|):
    TensorRT takes one dynamic range per tensor, and ORT's table writer keeps max(lowest, highest),
    which is not the magnitude when a tensor's negative tail is longer."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    data = {}
    for name, value in ranges.items():
        lowest, highest = value.range_value
        m = np.maximum(np.abs(lowest), np.abs(highest)).astype(np.float32)
        data[name] = TensorData(lowest=-m, highest=m)
    return TensorsData(ranges.calibration_method, data)


def constant_tensors(graph: Path) -> set[str]:
    """Tensors of ``graph`` computed from initializers alone (``Constant`` outputs, the ``Identity``
    copies the exporter makes of shared weights, and what follows from them): weights to TensorRT,
    which takes no dynamic range for them."""
    import onnx

    model = onnx.load(str(graph))
    constant = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if all(name in constant for name in node.input if name):
            constant.update(node.output)
    return constant


def write_trt_table(ranges, folder: Path, leave_out: set[str] = frozenset()) -> dict[str, float]:
    """Write ``TRT_FILES`` into ``folder`` (created) for the tensors of ``ranges`` but those in
    ``leave_out`` and those whose range is 0 (constant on every calibration text: no scale to give)
    or above ``MAX_RANGE`` (the masked scores); returns the dynamic range written per tensor.
    TensorRT keeps a tensor without a range in higher precision."""
    from onnxruntime.quantization.calibrate import TensorsData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    folder.mkdir(parents=True, exist_ok=True)
    table = symmetric(ranges)
    # by name: the calibrator's tensor order varies from run to run, and the table must be the same
    # bytes for the same ranges (a pin checks every file: docs/models.md, "Pins")
    kept = {name: table.data[name] for name in sorted(table.data)
            if name not in leave_out and 0 < float(table.data[name].highest) <= MAX_RANGE}
    with _quiet():
        write_calibration_table(dict(TensorsData(table.calibration_method, kept).items()), dir=str(folder))
    return {name: float(value.highest) for name, value in kept.items()}


def read_trt_table(path: Path) -> dict[str, float]:
    """Tensor name -> dynamic range, read from a ``calibration.flatbuffers`` table as TensorRT's
    execution provider reads it (ORT's ``TrtTable`` flatbuffers schema)."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    table = TrtTable.GetRootAsTrtTable(path.read_bytes(), 0)
    return {table.Dict(i).Key().decode(): float(table.Dict(i).Value().decode()) for i in range(table.DictLength())}


def copy_trt_table(folder: Path, target: Path) -> Path:
    """Copy ``folder``'s ``calibration.flatbuffers`` to ``target`` (the name a registry's TensorRT
    provider options give, under its ``trt_engine_cache_path``); returns ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / TRT_TABLE, target)
    return target


def trt_int8_table(spec: ModelSpec) -> Path | None:
    """Where ``spec``'s TensorRT provider reads its INT8 calibration table: ``trt_engine_cache_path``
    / ``trt_int8_calibration_table_name`` (as ONNX Runtime resolves it; relative to the working
    directory), or None when the model does not enable TensorRT INT8. ``ExportError`` when it
    enables it without naming a table, or asks for TensorRT's native table format (this project
    writes ONNX Runtime's)."""
    for provider in spec.ort.providers:
        options = provider.options
        if provider.name != "tensorrt" or str(options.get("trt_int8_enable", False)).lower() not in ("true", "1"):
            continue
        name = options.get("trt_int8_calibration_table_name")
        if not name:
            raise ExportError(f"model {spec.name!r}: trt_int8_enable needs trt_int8_calibration_table_name (the table "
                              f"`python -m export calibrate --model {spec.name}` writes)")
        if str(options.get("trt_int8_use_native_calibration_table", False)).lower() in ("true", "1"):
            raise ExportError(f"model {spec.name!r}: trt_int8_use_native_calibration_table asks for TensorRT's own "
                              "table format; `python -m export calibrate` writes ONNX Runtime's (leave it false)")
        return Path(str(options.get("trt_engine_cache_path", ""))) / str(name)
    return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantization tools print to stdout and log a warning per node; stdout is this CLI's
    results, so both are held back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)

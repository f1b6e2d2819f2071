"""The served ColQwen2 path against colpali-engine (the code that trained vidore/colqwen2-v1.0), once,
on the tiny random model. Two steps, in two environments (colpali-engine pins its own transformers):

    .venv/bin/python bench/colpali_parity.py dump /tmp/colpali-cmp
    python3 -m venv /tmp/colpali-venv && /tmp/colpali-venv/bin/pip install torch==2.13.0 colpali-engine==0.3.18
    /tmp/colpali-venv/bin/python bench/colpali_parity.py compare /tmp/colpali-cmp > bench/results/colpali_parity.json

``dump`` (this project's environment) builds the tiny random ColQwen2 (``export/colqwen2.py``),
exports its two graphs, and writes: the weights under colpali-engine's names, the VLM config, the
tokenizer, sample pages (A4 portrait, A4 landscape, square, 3:1) as PNG, sample queries, and for
each the vectors of the runner's engine (ONNX Runtime CPU, pages resized by the gateway), of the
M-RoPE reference, and of transformers' ``ColQwen2ForRetrieval`` (1-D positions).

``compare`` (colpali-engine's environment) loads those weights into colpali-engine's ``ColQwen2``
and prints, per item, the relative error ||a - b|| / ||b|| of ours against colpali-engine:
pages through colpali-engine's ``ColQwen2Processor`` built on transformers' PIL image processor
with the registry's pixel range (PyPI has no torchvision for the CPU build of torch 2.13, so
transformers' torchvision image processor cannot be compared here); queries fed with our ids, and
colpali-engine's own query formatting compared token by token.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

PIXELS = (3136, 50176)  # the registry's colqwen2-tiny-random
PAGES = {"A4 portrait": (595, 842), "A4 landscape": (842, 595), "square": (500, 500), "3:1": (600, 200)}
QUERIES = ["Which page shows the quarterly revenue table?", "chart"]


def sample_page(size: tuple[int, int], seed: int):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(200, 256, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for y in range(20, size[1] - 20, 24):
        draw.text((20, y), f"Quarterly revenue grew {y}% on services", fill=(0, 0, 0))
    return image


def dump(out: Path) -> None:
    import tempfile

    import onnxruntime as ort
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from core.pages import PageGrid, resize_page
    from export import colqwen2
    from models.schema import ModelSpec, VisionSpec
    from models.store import StoreEntry
    from runners.ort.colqwen2 import ColQwen2Engine

    out.mkdir(parents=True, exist_ok=True)
    loaded = colqwen2.Loaded(*colqwen2.tiny_random(pixels=PIXELS), revision="", random_weights=True)
    renamed = {}
    for key, value in loaded.model.state_dict().items():  # transformers' ColQwen2ForRetrieval -> colpali's ColQwen2
        if key.startswith("embedding_proj_layer."):
            renamed[key.replace("embedding_proj_layer.", "custom_text_proj.")] = value
        elif key.startswith("vlm."):
            renamed[key[len("vlm."):]] = value
    torch.save(renamed, out / "weights.pt")
    (out / "config.json").write_text(json.dumps(loaded.model.config.vlm_config.to_dict()))
    loaded.processor.tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    images = [sample_page(size, seed) for seed, size in enumerate(PAGES.values())]
    for name, image in zip(PAGES, images, strict=True):
        image.save(out / f"{name}.png")
    with tempfile.TemporaryDirectory() as tmp:
        colqwen2.export_graphs(loaded, Path(tmp))
        settings = colqwen2.stage_files(loaded, Path(tmp), 128, PIXELS)
        spec = ModelSpec(name="tiny", engine="ort", store_tag="tiny", pooling="multi", max_tokens=128, dimensions=128,
                         vision=VisionSpec(min_pixels=PIXELS[0], max_pixels=PIXELS[1]))
        cpu = lambda path, _spec, _profile: ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # noqa: E731
        engine = ColQwen2Engine(spec, StoreEntry(tag="tiny", path=Path(tmp), metadata={}, settings=settings), cpu)
        prefix, suffix = colqwen2.query_frame(loaded.processor)
        ids = [loaded.processor.tokenizer(prefix + q, add_special_tokens=False)["input_ids"] + suffix for q in QUERIES]
        grid = PageGrid(engine.layout.factor, *PIXELS)
        ours = engine.embed([np.asarray(i, np.int64) for i in ids] + [resize_page(im, grid, "x") for im in images])
    arrays = {f"ours_{i}": a for i, a in enumerate(ours)}
    reference = colqwen2.reference_queries(loaded, QUERIES) + colqwen2.reference_pages(loaded, images)
    arrays |= {f"reference_{i}": a for i, a in enumerate(reference)}
    arrays |= {f"one_d_{i}": a for i, a in enumerate(colqwen2.transformers_pages(loaded, images), start=len(QUERIES))}
    np.savez(out / "vectors.npz", **arrays)
    (out / "inputs.json").write_text(json.dumps({
        "pages": list(PAGES), "queries": QUERIES, "query_ids": ids, "pixels": PIXELS,
        "pad_token": loaded.processor.tokenizer.pad_token, "eos_token": loaded.processor.tokenizer.eos_token,
    }))
    print(f"wrote {out}", file=sys.stderr)


def compare(out: Path) -> None:
    import importlib.metadata
    import types

    import torch
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    # colpali-engine imports smart_resize from transformers' torchvision image processor module, and
    # PyPI has no torchvision for the CPU build of torch 2.13 (its CUDA build fails to import beside
    # it): give that import the PIL module's smart_resize (the same function, "Copied from" it).
    sys.modules.setdefault("transformers.models.qwen2_vl.image_processing_qwen2_vl",
                           types.SimpleNamespace(smart_resize=pil.smart_resize))
    from colpali_engine.models import ColQwen2, ColQwen2Processor
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class  # the absent video processor needs torchvision too
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None if arg is None else check(
        self, name, arg)
    from PIL import Image
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig

    inputs = json.loads((out / "inputs.json").read_text())
    vectors = np.load(out / "vectors.npz")
    config = Qwen2VLConfig(**json.loads((out / "config.json").read_text()))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = ColQwen2(config).eval()
    missing, unexpected = model.load_state_dict(torch.load(out / "weights.pt"), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not fit colpali-engine's ColQwen2: missing {missing}, unexpected {unexpected}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), pad_token=inputs["pad_token"],
                                        eos_token=inputs["eos_token"])
    size = {"shortest_edge": inputs["pixels"][0], "longest_edge": inputs["pixels"][1]}
    processors = {"pil": pil.Qwen2VLImageProcessorPil(size=size)}

    def error(a: np.ndarray, b: np.ndarray) -> float | str:
        if a.shape != b.shape:
            return f"shapes {a.shape} vs {b.shape}"
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    result: dict = {"colpali_engine": importlib.metadata.version("colpali-engine"),
                    "transformers": importlib.metadata.version("transformers"),
                    "torch": importlib.metadata.version("torch"), "pages": {}, "queries": {}}
    images = [Image.open(out / f"{name}.png").convert("RGB") for name in inputs["pages"]]
    offset = len(inputs["queries"])
    with torch.no_grad():
        for label, image_processor in processors.items():
            processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
            for i, (name, image) in enumerate(zip(inputs["pages"], images, strict=True)):
                batch = processor.process_images([image])
                theirs = model(**batch)[0].numpy()
                result["pages"].setdefault(name, {})[f"ours vs colpali-engine, {label} resize"] = error(
                    vectors[f"ours_{offset + i}"], theirs)
                if label == "pil":
                    result["pages"][name]["M-RoPE reference vs colpali-engine"] = error(
                        vectors[f"reference_{offset + i}"], theirs)
                    result["pages"][name]["ColQwen2ForRetrieval (1-D) vs colpali-engine"] = error(
                        vectors[f"one_d_{offset + i}"], theirs)
        processor = ColQwen2Processor(image_processor=processors["pil"], tokenizer=tokenizer)
        for i, (query, ids) in enumerate(zip(inputs["queries"], inputs["query_ids"], strict=True)):
            ids_t = torch.tensor([ids])
            theirs = model(input_ids=ids_t, attention_mask=torch.ones_like(ids_t))[0].numpy()
            own = processor.process_queries([query])["input_ids"][0].tolist()
            result["queries"][query] = {
                "ours vs colpali-engine on the same ids": error(vectors[f"ours_{i}"], theirs),
                "colpali-engine's own formatting": "same ids" if own == ids else
                f"differs: {tokenizer.decode(own)!r} ({len(own)} ids) vs ours {tokenizer.decode(ids)!r} ({len(ids)})",
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("dump", "compare"):
        raise SystemExit(__doc__)
    (dump if sys.argv[1] == "dump" else compare)(Path(sys.argv[2]))

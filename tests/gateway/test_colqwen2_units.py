"""ColQwen2 pieces without a server: image/PDF preprocessing, page resizing and patch layout
against transformers' Qwen2-VL image processor, page token counts and M-RoPE positions against
``Qwen2VLModel.get_rope_index``, query formatting against ``ColQwen2Processor``, MaxSim against
its ``score_retrieval``, the content-part protocol, and what the ColQwen2 engine passes to ONNX
Runtime (TensorRT/CUDA options and optimisation profiles; the providers cannot run here, so ONNX
Runtime is replaced by a recorder)."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import pages as geometry
from core.errors import InvalidRequest
from core.wire import Job, pack_call, unpack_call
from gateway import images
from gateway.parsing import parse_request
from gateway.protocol import FilePart, ImagePart, RerankRequest
from gateway.serving import EmbeddingServing
from models.registry import load_registry
from runners.ort.engine import token_budget_batches
from tests.support.hostile_files import lying_page_tree

LIMITS = images.ImageLimits(max_bytes=100_000, max_pixels=1_000_000)
GRID = geometry.PageGrid(factor=28, min_pixels=3136, max_pixels=50176)  # colqwen2-tiny-random
# (width, height) before resizing: A4 portrait and landscape at 72 dpi, square, 3:1, US letter at
# 300 dpi, a thumbnail, a long strip and sizes that round both ways
SHAPES = [(595, 842), (842, 595), (700, 700), (900, 300), (2550, 3300), (40, 30), (2000, 60), (13, 1009), (97, 211)]


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def pdf_bytes(sizes: list[tuple[int, int]], colors: list[tuple[int, int, int]]) -> bytes:
    """A PDF with one page per (width, height) in points (Pillow writes 72 dpi pages)."""
    pages = [Image.new("RGB", size, color) for size, color in zip(sizes, colors, strict=True)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    return buffer.getvalue()


# ---- data URLs and images ----

@pytest.mark.parametrize("fmt, media_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_supported_formats_decode_to_rgb(fmt, media_type):
    raw = encoded(Image.new("RGB", (40, 30), (10, 200, 30)), fmt)
    kind, data = images.decode_data_url(data_url(media_type, raw), list(images.IMAGE_TYPES), "input[0]", LIMITS)
    image = images.open_image(data, kind, "input[0]", LIMITS)
    assert image.mode == "RGB" and image.size == (40, 30)
    assert np.abs(np.asarray(image, dtype=int)[15, 20] - (10, 200, 30)).max() <= 3


@pytest.mark.parametrize(
    "url, code, fragment",
    [
        ("https://example.com/a.png", "invalid_request", "remote URLs are not fetched"),
        ("data:image/gif;base64,R0lGODlh", "unsupported_media_type", "image/gif"),
        ("data:image/png,plain", "invalid_request", "base64-encoded"),
        ("data:image/png;base64,@@@notbase64", "invalid_request", "not valid base64"),
        ("data:image/png;base64," + "A" * 200_000, "image_too_large", "100000 bytes"),
    ],
)
def test_bad_data_urls_are_400s_naming_the_input(url, code, fragment):
    with pytest.raises(InvalidRequest) as info:
        images.decode_data_url(url, list(images.IMAGE_TYPES), "input[2]", LIMITS)
    assert info.value.param == "input[2]" and info.value.code == code and fragment in info.value.message


def test_corrupt_and_mislabelled_images_are_400s():
    png = encoded(Image.new("RGB", (20, 20)), "PNG")
    for data, media_type in ((png[:40], "image/png"), (b"\x89PNG garbage" * 10, "image/png"), (png, "image/jpeg")):
        with pytest.raises(InvalidRequest) as info:
            images.open_image(data, media_type, "input[0]", LIMITS)
        assert info.value.code == "invalid_image"


def test_decompression_bomb_is_refused_from_the_header():
    bomb = encoded(Image.new("L", (4000, 4000)), "PNG")  # 16 Mpx in a few KB
    assert len(bomb) < LIMITS.max_bytes
    with pytest.raises(InvalidRequest) as info:
        images.open_image(bomb, "image/png", "input[0]", LIMITS)
    assert info.value.code == "image_too_large" and "4000x4000" in info.value.message


def test_aspect_ratio_is_limited_from_the_header():
    strip = encoded(Image.new("L", (1, 50_000)), "PNG")  # 50,000 px: inside the pixel limit
    with pytest.raises(InvalidRequest) as info:
        images.open_image(strip, "image/png", "input[0]", LIMITS)
    assert info.value.code == "image_too_large" and "200 times" in info.value.message
    ok = images.open_image(encoded(Image.new("L", (1, 200)), "PNG"), "image/png", "input[0]", LIMITS)
    assert ok.size == (1, 200)


def reference_rgb(data: bytes) -> np.ndarray:
    """The image as transformers 5.19 loads it for Qwen2-VL/ColQwen2: load_image (EXIF transpose,
    convert("RGB")), then the image processor's convert_to_rgb."""
    from transformers.image_transforms import convert_to_rgb
    from transformers.image_utils import load_image

    return np.asarray(convert_to_rgb(load_image(base64.b64encode(data).decode())))


def exif_rotated() -> bytes:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # a blue left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([255, 0, 0, 0, 128, 255])
    image.paste(0, (0, 0, 4, 8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data, media_type",
    [
        (exif_rotated(), "image/jpeg"),
        (palette_with_transparency(), "image/png"),
        (encoded(Image.new("CMYK", (8, 6), (0, 255, 255, 30)), "JPEG"), "image/jpeg"),
        (encoded(Image.new("RGBA", (8, 6), (200, 10, 10, 0)), "PNG"), "image/png"),
        (encoded(Image.new("LA", (8, 6), (90, 120)), "PNG"), "image/png"),
        (encoded(Image.new("RGBA", (8, 6), (10, 200, 10, 100)), "WEBP"), "image/webp"),
    ],
    ids=["exif-orientation", "palette-transparency", "cmyk", "rgba", "gray-alpha", "webp-alpha"],
)
def test_modes_read_as_transformers_reads_them(data, media_type):
    ours = np.asarray(images.open_image(data, media_type, "input[0]", LIMITS))
    assert ours.shape == reference_rgb(data).shape and (ours == reference_rgb(data)).all()


def test_exif_orientation_is_applied():
    image = images.open_image(exif_rotated(), "image/jpeg", "input[0]", LIMITS)
    assert image.size == (20, 40)  # portrait once rotated
    assert np.abs(np.subtract(image.getpixel((10, 2)), (0, 0, 255))).max() <= 40  # the blue edge is on top


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white():
    ramp = np.repeat(np.linspace(0, 65535, 64).astype(np.uint16)[None, :], 4, axis=0)
    data = encoded(Image.fromarray(ramp), "PNG")
    ours = np.asarray(images.open_image(data, "image/png", "input[0]", LIMITS))[0, :, 0]
    np.testing.assert_array_equal(ours, ramp[0] >> 8)
    assert (reference_rgb(data)[0, 1:, 0] == 255).all()  # transformers' convert("RGB") clips: a white page


@pytest.mark.parametrize("pixels", [(3136, 50176), (3136, 602112)], ids=["tiny", "colqwen2-v1.0"])
def test_smart_resize_equals_transformers(pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    grid = geometry.PageGrid(factor=28, min_pixels=pixels[0], max_pixels=pixels[1])
    rng = np.random.default_rng(0)
    sizes = [(h, w) for w, h in SHAPES] + [tuple(int(v) for v in rng.integers(10, 5000, 2)) for _ in range(300)]
    for height, width in sizes:
        if max(height, width) / min(height, width) > 200:
            continue
        assert geometry.smart_resize(height, width, grid) == smart_resize(height, width, 28, *pixels), (height, width)


@pytest.mark.parametrize("size", SHAPES[:7])
def test_pages_are_resized_and_patched_exactly_as_the_qwen2_vl_processor(size):
    """The gateway's resize and the runner's patch layout against the processor's pixel_values:
    same grid, same normalised patches (the graph normalises what ``patchify`` lays out)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from runners.ort.colqwen2 import patchify

    processor = Qwen2VLImageProcessorPil(min_pixels=GRID.min_pixels, max_pixels=GRID.max_pixels)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    reference = processor(images=[image], return_tensors="np")
    pixels = geometry.resize_page(image, GRID, "input[0]")
    assert pixels.dtype == np.uint8 and pixels.shape[:2] == tuple(reference["image_grid_thw"][0, 1:] * 14)
    assert pixels.shape[0] * pixels.shape[1] <= GRID.max_pixels
    patches = patchify(pixels, 14, 2).reshape(-1, 3, 1, 14, 14).astype(np.float64) / 255
    mean, std = (np.asarray(v).reshape(1, 3, 1, 1, 1) for v in (processor.image_mean, processor.image_std))
    ours = np.broadcast_to((patches - mean) / std, (len(patches), 3, 2, 14, 14)).reshape(len(patches), -1)
    np.testing.assert_allclose(ours, reference["pixel_values"], atol=1e-5)


def test_a_page_too_narrow_for_the_pixel_range_is_a_400():
    for size in ((2100, 10), (3000, 20)):  # aspect over 200; a strip 28 pixels high would exceed max_pixels
        with pytest.raises(InvalidRequest) as info:
            geometry.resize_page(Image.new("RGB", size), GRID, "input[3]")
        assert info.value.param == "input[3]" and info.value.code == "invalid_image"
        assert "too narrow" in info.value.message


# ---- PDF pages ----

def admit_up_to(pages: int, pixels: int = 10**9):
    """A request budget as the image pool keeps it, and what it was asked."""
    from gateway.image_pool import RequestBudget

    budget, asked = RequestBudget("input", pages, pixels), []

    def admit(n: int, p: int, param: str) -> None:
        asked.append((n, p))
        budget.admit(n, p, param)

    return admit, asked


def test_pdf_pages_render_in_the_requested_order_at_the_dpi():
    pdf = pdf_bytes([(200, 300), (300, 200), (200, 300)], [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    admit, asked = admit_up_to(4)
    pages = list(images.render_pdf(pdf, [3, 1], dpi=144, param="input[0]", limits=LIMITS, admit=admit))
    assert [number for number, _ in pages] == [3, 1]
    assert pages[0][1].size == (400, 600)  # 200x300 pt at 144 dpi
    assert asked == [(2, 0), (0, 400 * 600), (0, 400 * 600)]  # pages first, then each page's pixels
    # Pillow stores PDF pages as JPEG: colours within a few levels
    assert np.abs(np.subtract(pages[0][1].getpixel((200, 300)), (0, 0, 255))).max() <= 3
    assert np.abs(np.subtract(pages[1][1].getpixel((10, 10)), (255, 0, 0))).max() <= 3
    assert len(list(images.render_pdf(pdf, None, 72, "input[0]", LIMITS, admit_up_to(4)[0]))) == 3


@pytest.mark.parametrize(
    "pages, max_pages, dpi, code, fragment",
    [
        ([4], 4, 72, "invalid_request", "page 4 does not exist (the PDF has 3)"),
        ([], 4, 72, "invalid_request", "no pages selected"),
        (None, 2, 72, "too_many_images", "selects 3 images and pages"),
        ([1], 4, 600, "image_too_large", "page 1"),  # 200x300 pt at 600 dpi = 4.2 Mpx
    ],
)
def test_pdf_selection_and_limits(pages, max_pages, dpi, code, fragment):
    pdf = pdf_bytes([(200, 300)] * 3, [(0, 0, 0)] * 3)
    with pytest.raises(InvalidRequest) as info:
        list(images.render_pdf(pdf, pages, dpi, "input[1]", LIMITS, admit_up_to(max_pages)[0]))
    assert info.value.code == code and fragment in info.value.message


def test_request_budget_counts_pages_and_pixels_over_its_parts():
    from gateway.image_pool import RequestBudget

    budget = RequestBudget("input", max_pages=3, max_pixels=1000)
    budget.admit(2, 400, "input[0]")
    with pytest.raises(InvalidRequest) as info:
        budget.admit(2, 0, "input[1]")  # 4 pages in all
    assert info.value.param == "input" and info.value.code == "too_many_images"
    with pytest.raises(InvalidRequest) as info:
        budget.admit(0, 2000, "input[1]")  # over the request's pixels by itself
    assert info.value.param == "input[1]" and info.value.code == "image_too_large"
    budget.admit(1, 600, "input[2]")
    budget.closed = True  # the request ended: its parts' next pages are refused
    with pytest.raises(InvalidRequest):
        budget.admit(0, 0, "input[2]")


def test_a_page_tree_that_claims_more_pages_than_it_holds_is_a_400():
    assert len(list(images.render_pdf(lying_page_tree(), [1], 72, "input[0]", LIMITS, admit_up_to(4)[0]))) == 1
    with pytest.raises(InvalidRequest) as info:
        list(images.render_pdf(lying_page_tree(), None, 72, "input[0]", LIMITS, admit_up_to(4)[0]))
    assert info.value.code == "invalid_file" and "page 2" in info.value.message


def test_corrupt_pdf_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        list(images.render_pdf(b"%PDF-1.7 not really", None, 72, "input[0]", LIMITS, admit_up_to(4)[0]))
    assert info.value.code == "invalid_file"


# ---- protocol and wire format ----

def test_content_parts_parse_alone_or_mixed_with_text():
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    mixed = parse_request(json.dumps({"model": "m", "input": ["q", part]}).encode()).input
    assert mixed[0] == "q" and isinstance(mixed[1], ImagePart)
    alone = parse_request(json.dumps({"model": "m", "input": {"type": "file", "file": {
        "file_data": "data:application/pdf;base64,AA==", "pages": [1, 3]}}}).encode()).input
    assert isinstance(alone, FilePart) and alone.file.pages == [1, 3]
    with pytest.raises(InvalidRequest) as info:
        parse_request(json.dumps({"model": "m", "input": [{"type": "audio", "audio": {}}]}).encode())
    assert info.value.param == "input"
    with pytest.raises(InvalidRequest) as info:
        parse_request(json.dumps({"model": "m",
                                  "input": [{"type": "file", "file": {"file_data": "x", "pages": [0]}}]}).encode())
    assert info.value.param == "input"


def test_rerank_request_validation():
    ok = parse_request(b'{"model":"m","query":"q","documents":["a","b"],"top_n":1}', RerankRequest)
    assert ok.return_documents is True and ok.top_n == 1
    for body, param in ((b'{"model":"m","query":"q","documents":[]}', "documents"),
                        (b'{"model":"m","query":"q","documents":["a"],"top_n":0}', "top_n"),
                        (b'{"model":"m","documents":["a"]}', "query")):
        with pytest.raises(InvalidRequest) as info:
            parse_request(body, RerankRequest)
        assert info.value.param == param


def test_image_jobs_round_trip_through_the_wire_format():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 56, 3), dtype=np.uint8)
    page, query = unpack_call(pack_call([Job("m", None, pixels, 1.0), Job("m", None, np.arange(5), 1.0)]))
    assert page.value.dtype == np.uint8 and (page.value == pixels).all()
    assert query.value.tolist() == [0, 1, 2, 3, 4]


def test_sub_batches_respect_max_rows():
    assert token_budget_batches([3] * 5, 1000, 2, 32) == [[0, 1], [2, 3], [4]]


# ---- reference implementation: query formatting and MaxSim ----

def tiny_settings(processor) -> dict:
    """The ``embedding.json`` settings the export writes for the tiny model (those read here)."""
    from export import colqwen2

    prefix, suffix = colqwen2.query_frame(processor)
    page_prefix, page_suffix = colqwen2.page_frame(processor)
    return {"query_prefix": prefix, "query_suffix_ids": suffix, "vocab_size": 400, "patch_size": 14,
            "merge_size": 2, "page_prefix_ids": page_prefix, "page_suffix_ids": page_suffix,
            "image_token_id": processor.image_token_id, "text_hidden_size": 64}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random ColQwen2 (model, processor) and a gateway VisionPreprocessor for it."""
    from export import colqwen2
    from gateway.preprocess import VisionPreprocessor
    from models.store import StoreEntry

    model, processor = colqwen2.tiny_random()
    folder = tmp_path_factory.mktemp("tiny")
    processor.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    settings = tiny_settings(processor)
    spec = load_registry().models["colqwen2-tiny-random"]
    entry = StoreEntry(tag="t", path=folder, metadata={}, settings=settings)
    return model, processor, VisionPreprocessor(spec, entry)


def test_queries_are_formatted_exactly_as_colqwen2processor(tiny):
    _, processor, preprocessor = tiny
    texts = ["What is the revenue growth?", "Ça coûte combien ?", "x"]
    ours = preprocessor.texts(texts, None, truncate=True)
    for text, ids in zip(texts, ours, strict=True):
        assert ids.tolist() == processor.process_queries([text])["input_ids"][0].tolist()


def test_long_queries_keep_the_augmentation_suffix_or_are_refused(tiny):
    _, processor, preprocessor = tiny
    text = "revenue " * 300
    (ids,) = preprocessor.texts([text], None, truncate=True)
    suffix = processor.process_queries(["x"])["input_ids"][0].tolist()[-11:]
    assert len(ids) == 128 and ids[-11:].tolist() == suffix
    with pytest.raises(InvalidRequest) as info:
        preprocessor.texts([text], None, truncate=False)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequest):
        preprocessor.token_ids([[1, 2, 3]], None, True)
    with pytest.raises(InvalidRequest) as info:
        preprocessor.texts(["q"], "document", True)
    assert info.value.param == "input_type"


def test_page_prompts_token_counts_and_mrope_positions_equal_the_reference(tiny):
    """For pages of many shapes: the runner's prompt ids equal the processor's, the gateway's
    token count their length, and the M-RoPE positions what ``Qwen2VLModel.get_rope_index``
    computes from them (and the vision rotary positions ``get_vision_position_ids``)."""
    import torch
    from transformers.vision_utils import get_vision_position_ids

    from runners.ort.colqwen2 import PageLayout, page_ids, page_positions, patch_positions

    model, processor, preprocessor = tiny
    layout = PageLayout.from_settings(tiny_settings(processor))
    for width, height in SHAPES[:7]:
        batch = processor.process_images([Image.new("RGB", (width, height))])
        grid = batch["image_grid_thw"]
        rows, cols = int(grid[0, 1]), int(grid[0, 2])
        ids = page_ids(layout, rows * 14, cols * 14)
        assert ids.tolist() == batch["input_ids"][0].tolist()
        assert preprocessor.page_tokens(rows * 14, cols * 14) == len(ids)
        expected, _ = model.vlm.get_rope_index(batch["input_ids"], (batch["input_ids"] == layout.image_token_id).int(),
                                               image_grid_thw=grid, attention_mask=batch["attention_mask"])
        np.testing.assert_array_equal(page_positions(layout, rows * 14, cols * 14), expected[:, 0].numpy())
        np.testing.assert_array_equal(patch_positions(rows, cols, 2),
                                      get_vision_position_ids(torch.tensor([[1, rows, cols]]), 2).numpy())


def test_maxsim_equals_colqwen2processor_score_retrieval(tiny):
    """Pair by pair: with several passages at once the reference zero-pads them, and a padding
    row then wins the max for a query token whose dot products are all negative."""
    import torch

    _, processor, _ = tiny
    rng = np.random.default_rng(1)
    unit = lambda n: (lambda a: a / np.linalg.norm(a, axis=1, keepdims=True))(  # noqa: E731
        rng.normal(size=(n, 128)).astype(np.float32))
    queries, pages = [unit(7), unit(12)], [unit(30), unit(5), unit(60)]
    expected = np.array([[float(processor.score_retrieval([torch.from_numpy(q)], [torch.from_numpy(p)])[0, 0])
                          for p in pages] for q in queries])
    ours = [[EmbeddingServing._score(q, p, multi=True) for p in pages] for q in queries]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


# ---- what the engine passes to ONNX Runtime ----

class RecordingOrt:
    """Stands in for ``onnxruntime``: every provider is 'available' and sessions are recorded."""

    def __init__(self, real):
        self.real = real
        self.sessions: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def get_available_providers(self):
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def preload_dlls(self):
        pass

    def InferenceSession(self, path, sess_options=None, providers=None, provider_options=None, **_):  # noqa: N802
        self.sessions.append({"path": path, "providers": providers, "options": provider_options,
                              "sess_options": sess_options})
        node = type("Node", (), {"op_type": "MatMul"})()
        info = [type("Subgraph", (), {"ep_name": providers[0], "get_nodes": lambda _: [node]})()]
        return type("Session", (), {"get_providers": lambda _: providers,
                                    "get_provider_graph_assignment_info": lambda _: info})()


def test_colqwen2_engine_passes_tensorrt_options_and_a_profile_per_graph(monkeypatch, tmp_path):
    """Two sessions (the language model's weights once), each with the registry's TensorRT options
    (the workspace within the runner's share), engines in a key folder of their own, and one profile
    covering 1 to max_batch_pages pages of up to max_pixels, and queries up to max_batch_queries x
    max_tokens: the largest calls the memory plan counts (its registry `calls`)."""
    import onnxruntime

    from models.store import StoreEntry
    from runners.ort import colqwen2 as engine_module
    from runners.ort import engine_cache, providers
    from runners.ort.preflight import session_factory

    recorder = RecordingOrt(onnxruntime)
    monkeypatch.setitem(sys.modules, "onnxruntime", recorder)
    monkeypatch.setattr(providers, "_unloadable_libraries", lambda name: [])  # as if TensorRT were installed
    monkeypatch.setattr(providers, "engine_key", lambda options, content: engine_cache.EngineKey(
        "10.16.1", "sm89", "1.31.1", content, engine_cache.settings_text(options)))  # as if on an RTX 4090
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path / "cache"))
    served = load_registry().served("rtx4090")
    spec = served.unit("colqwen2")
    settings = {"pad_token_id": 151643, "patch_size": 14, "merge_size": 2, "image_token_id": 151655,
                "text_hidden_size": 1536, "page_prefix_ids": [0] * 4, "page_suffix_ids": [0] * 7}
    entry = StoreEntry(tag="t", path=tmp_path / "entry", metadata={"content": {"digest": "sha256:t"}},
                       settings=settings)
    engine_module.ColQwen2Engine(spec, entry, session_factory(spec, entry, served, build=True))

    assert [str(Path(s["path"]).relative_to(entry.path)) for s in recorder.sessions] == [
        "vision/model.onnx", "language/model.onnx"]
    folders = set()
    for session in recorder.sessions:
        assert session["providers"] == ["TensorrtExecutionProvider"]  # never CUDA for the fp32 graphs
        (trt,) = session["options"]
        assert trt["trt_bf16_enable"] == "1" and "trt_fp16_enable" not in trt
        assert trt["trt_load_user_initializer"] == "1" and trt["trt_engine_cache_enable"] == "1"
        assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"]  # the build's folder, renamed after
        assert trt["trt_timing_cache_enable"] == "1" and trt["trt_max_workspace_size"] == "1073741824"
        assert session["sess_options"].intra_op_num_threads == 0
        folders.add(Path(trt["trt_engine_cache_path"]).name.removeprefix(".").rsplit(".", 2)[0])  # .<key>.<pid>.tmp
    built = sorted(p.name for p in (tmp_path / "cache/tensorrt/colqwen2").iterdir() if engine_cache.is_built(p))
    assert len(built) == 2 and set(built) == folders  # one key folder per graph
    vision, language = (s["options"][0] for s in recorder.sessions)
    # 602112 pixels = 3072 patches of 14 x 14 = 768 visual tokens; 4 pages per call
    assert vision["trt_profile_min_shapes"] == "patches:1x4x588,patch_positions:1x4x2,patch_mask:1x4"
    assert vision["trt_profile_opt_shapes"] == vision["trt_profile_max_shapes"] == (
        "patches:4x3072x588,patch_positions:4x3072x2,patch_mask:4x3072")
    assert language["trt_profile_min_shapes"] == (
        "input_ids:1x1,attention_mask:1x1,position_ids:3x1x1,image_features:1x1536,image_index:1x1")
    # pages: 768 visual + 11 prompt tokens; queries: 16 rows, 768 tokens; 4 x 768 visual features
    assert language["trt_profile_opt_shapes"] == (
        "input_ids:4x779,attention_mask:4x779,position_ids:3x4x779,image_features:3072x1536,image_index:4x779")
    assert language["trt_profile_max_shapes"] == (
        "input_ids:16x779,attention_mask:16x779,position_ids:3x16x779,image_features:3072x1536,image_index:16x779")
    # the memory plan counts exactly these largest calls
    vision_net, language_net = spec.memory.networks
    assert vision_net.calls == ((4, 3072),) and language_net.calls == ((16, 779),)

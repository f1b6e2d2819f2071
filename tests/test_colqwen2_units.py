"""ColQwen2 pieces without a server: image/PDF preprocessing, query formatting against
transformers' ColQwen2Processor, MaxSim against its ``score_retrieval``, the content-part
protocol, and what the ColQwen2 engine passes to ONNX Runtime (TensorRT/CUDA options and
optimisation profiles; the providers cannot run here, so ONNX Runtime is replaced by a recorder)."""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gateway import images
from gateway.app import parse_request
from gateway.errors import InvalidRequest
from gateway.protocol import FilePart, ImagePart, RerankRequest
from gateway.serving import EmbeddingServing
from models.registry import load_registry
from runners.engine import EmbedJob, job_payload
from runners.ort.engine import token_budget_batches

LIMITS = images.ImageLimits(max_bytes=100_000, max_pixels=1_000_000)
BUCKETS = [(224, 168), (168, 224)]


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


def test_transparency_is_composited_onto_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert images.to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_bucket_by_aspect_ratio_and_bicubic_resize():
    assert images.choose_bucket(600, 800, BUCKETS) == (224, 168)  # portrait
    assert images.choose_bucket(800, 600, BUCKETS) == (168, 224)  # landscape
    pixels = images.to_bucket(Image.new("RGB", (612, 792), (1, 2, 3)), BUCKETS)
    assert pixels.shape == (224, 168, 3) and pixels.dtype == np.uint8 and (pixels == (1, 2, 3)).all()


# ---- PDF pages ----

def test_pdf_pages_render_in_the_requested_order_at_the_dpi():
    pdf = pdf_bytes([(200, 300), (300, 200), (200, 300)], [(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    pages = images.render_pdf(pdf, [3, 1], dpi=144, max_pages=4, param="input[0]", limits=LIMITS)
    assert [number for number, _ in pages] == [3, 1]
    assert pages[0][1].size == (400, 600)  # 200x300 pt at 144 dpi
    # Pillow stores PDF pages as JPEG: colours within a few levels
    assert np.abs(np.subtract(pages[0][1].getpixel((200, 300)), (0, 0, 255))).max() <= 3
    assert np.abs(np.subtract(pages[1][1].getpixel((10, 10)), (255, 0, 0))).max() <= 3
    assert len(images.render_pdf(pdf, None, 72, 4, "input[0]", LIMITS)) == 3


@pytest.mark.parametrize(
    "pages, max_pages, dpi, code, fragment",
    [
        ([4], 4, 72, "invalid_request", "page 4 does not exist (the PDF has 3)"),
        ([], 4, 72, "invalid_request", "no pages selected"),
        (None, 2, 72, "too_many_images", "selects 3 pages"),
        ([1], 4, 600, "image_too_large", "page 1"),  # 200x300 pt at 600 dpi = 4.2 Mpx
    ],
)
def test_pdf_selection_and_limits(pages, max_pages, dpi, code, fragment):
    pdf = pdf_bytes([(200, 300)] * 3, [(0, 0, 0)] * 3)
    with pytest.raises(InvalidRequest) as info:
        images.render_pdf(pdf, pages, dpi, max_pages, "input[1]", LIMITS)
    assert info.value.code == code and fragment in info.value.message


def test_corrupt_pdf_is_a_400():
    with pytest.raises(InvalidRequest) as info:
        images.render_pdf(b"%PDF-1.7 not really", None, 72, 4, "input[0]", LIMITS)
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
    job = EmbedJob.model_validate(job_payload("m", pixels, 1.0))
    assert job.ids == [] and (job.array() == pixels).all()
    ids = EmbedJob.model_validate(job_payload("m", np.arange(5, dtype=np.int64), 1.0))
    assert ids.image is None and ids.array().tolist() == [0, 1, 2, 3, 4]


def test_sub_batches_respect_max_rows():
    assert token_budget_batches([3] * 5, 1000, 2, 32) == [[0, 1], [2, 3], [4]]


# ---- reference implementation: query formatting and MaxSim ----

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random ColQwen2 (model, processor) and a gateway VisionPreprocessor for it."""
    from export import colqwen2
    from gateway.preprocess import VisionPreprocessor
    from models.store import StoreEntry

    model, processor = colqwen2.tiny_random()
    folder = tmp_path_factory.mktemp("tiny")
    prefix, suffix = colqwen2.query_frame(processor)
    processor.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    settings = {"query_prefix": prefix, "query_suffix_ids": suffix, "vocab_size": 400,
                "buckets": [{"height": 224, "width": 168, "tokens": 60, "graph": "page_224x168/model.onnx"}]}
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
    import onnxruntime

    from models.store import StoreEntry
    from runners.ort import colqwen2 as engine_module
    from runners.ort import providers

    recorder = RecordingOrt(onnxruntime)
    monkeypatch.setitem(sys.modules, "onnxruntime", recorder)
    monkeypatch.setattr(providers, "_unloadable_libraries", lambda name: [])  # as if TensorRT were installed
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path / "cache"))
    spec = load_registry().models["colqwen2"]
    settings = {"pad_token_id": 151643, "buckets": [
        {"height": 924, "width": 644, "tokens": 776, "graph": "page_924x644/model.onnx"},
        {"height": 644, "width": 924, "tokens": 776, "graph": "page_644x924/model.onnx"}]}
    engine_module.ColQwen2Engine(spec, StoreEntry(tag="t", path=tmp_path, metadata={}, settings=settings))

    assert [str(Path(s["path"]).relative_to(tmp_path)) for s in recorder.sessions] == [
        "query/model.onnx", "page_924x644/model.onnx", "page_644x924/model.onnx"]
    for session in recorder.sessions:
        assert session["providers"] == ["TensorrtExecutionProvider"]  # never CUDA for the fp32 graphs
        (trt,) = session["options"]
        assert trt["trt_bf16_enable"] == "1" and "trt_fp16_enable" not in trt
        assert trt["trt_load_user_initializer"] == "1" and trt["trt_engine_cache_enable"] == "1"
        assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "cache/tensorrt/colqwen2")
        assert trt["trt_timing_cache_enable"] == "1" and trt["trt_max_workspace_size"] == "1073741824"
        assert session["sess_options"].intra_op_num_threads == 0
    query, portrait, landscape = (s["options"][0] for s in recorder.sessions)
    assert query["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert query["trt_profile_opt_shapes"] == "input_ids:32x32,attention_mask:32x32"
    assert query["trt_profile_max_shapes"] == "input_ids:32x768,attention_mask:32x768"
    assert portrait["trt_profile_min_shapes"] == "pixel_values:1x924x644x3"
    assert portrait["trt_profile_max_shapes"] == portrait["trt_profile_opt_shapes"] == "pixel_values:4x924x644x3"
    assert landscape["trt_profile_max_shapes"] == "pixel_values:4x644x924x3"

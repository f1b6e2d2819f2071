"""Per-page and per-query latency of a ColQwen2 store entry, and of its preprocessing.

    python bench/colqwen2_latency.py [--model colqwen2-tiny-random] [--url http://127.0.0.1:3000]

Prints medians of ``--repeat`` runs (after one warm-up) for: the runner's engine on 1 and on
``max_batch_pages`` pages (ms per page) of four page shapes resized as the processor does (A4
portrait and landscape, square, 3:1), on 1 and 32 queries; gateway-side preprocessing (PNG
decode + resize; PDF page render at the registry's DPI + resize);
and, with ``--url``, one-image and one-query requests end to end through a running server.
Uses the registry (``EMBED_REGISTRY``) and the Bento store (``BENTOML_HOME``) as the server does.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's packages


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def sample_page(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (250, 248, 240))
    draw = ImageDraw.Draw(image)
    for y in range(20, size[1] - 20, 24):
        draw.text((20, y), "Quarterly revenue grew 12.5% on services; see table 3.", fill=(0, 0, 0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="colqwen2-tiny-random")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--url", help="a running server: also measure requests end to end")
    args = parser.parse_args()

    from core import pages as geometry
    from gateway import images
    from gateway.preprocess import VisionPreprocessor
    from models.registry import load_registry
    from models.store import open_entry, runner_files
    from runners.ort.colqwen2 import ColQwen2Engine

    spec = load_registry().models[args.model]
    entry = open_entry(spec, required=runner_files(spec))
    engine = ColQwen2Engine(spec, entry)
    preprocessor = VisionPreprocessor(spec, entry)
    letter = sample_page((612, 792))  # a US-letter page at 72 dpi
    batch = spec.vision.max_batch_pages
    queries = preprocessor.texts(["which page shows the quarterly revenue table?"] * 32, None, True)

    print(f"model {spec.name}, pages {spec.vision.min_pixels}-{spec.vision.max_pixels} pixels, provider "
          f"{engine.provider}, median of {args.repeat}")
    for label, size in (("A4 portrait", (595, 842)), ("A4 landscape", (842, 595)), ("square", (700, 700)),
                        ("3:1", (900, 300))):
        pixels = geometry.resize_page(sample_page(size), preprocessor.grid, "x")
        tokens = preprocessor.page_tokens(*pixels.shape[:2])
        one = median_ms(lambda pixels=pixels: engine.embed([pixels]), args.repeat)
        many = median_ms(lambda pixels=pixels: engine.embed([pixels] * batch), args.repeat)
        print(f"engine, {label} page {pixels.shape[0]}x{pixels.shape[1]} ({tokens} tokens): batch 1 "
              f"{one:.2f} ms/page; batch {batch} {many / batch:.2f} ms/page")
    q1 = median_ms(lambda: engine.embed(queries[:1]), args.repeat)
    q32 = median_ms(lambda: engine.embed(queries), args.repeat)
    print(f"engine, queries: batch 1 {q1:.2f} ms; batch 32 {q32 / 32:.2f} ms/query")

    buffer = io.BytesIO()
    letter.save(buffer, "PNG")
    png = buffer.getvalue()
    limits = images.ImageLimits(10 << 20, 40_000_000)
    decode = median_ms(lambda: geometry.resize_page(images.open_image(png, "image/png", "x", limits), preprocessor.grid,
                                                  "x"), args.repeat)
    buffer = io.BytesIO()
    letter.save(buffer, "PDF", resolution=72)
    pdf = buffer.getvalue()
    dpi = spec.vision.pdf_dpi
    render = median_ms(lambda: geometry.resize_page(images.render_pdf(pdf, [1], dpi, 1, "x", limits)[0][1],
                                                  preprocessor.grid, "x"), args.repeat)
    print(f"preprocessing: PNG 612x792 decode + resize {decode:.2f} ms; PDF page render at "
          f"{spec.vision.pdf_dpi} dpi + resize {render:.2f} ms")

    if args.url:
        import httpx

        url = "data:image/png;base64," + base64.b64encode(png).decode()
        with httpx.Client(base_url=args.url, timeout=60) as client:
            def post(value):
                response = client.post("/v1/embeddings", json={"model": spec.name, "input": [value]})
                assert response.status_code == 200, response.text

            image_ms = median_ms(lambda: post({"type": "image_url", "image_url": {"url": url}}), args.repeat)
            query_ms = median_ms(lambda: post("which page shows the quarterly revenue table?"), args.repeat)
        print(f"server end to end: one image {image_ms:.1f} ms; one query {query_ms:.1f} ms")


if __name__ == "__main__":
    main()

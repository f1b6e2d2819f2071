"""Image and PDF preprocessing for vision models (ColQwen2), in the gateway, before batching.

A request's image and file parts become uint8 RGB arrays ``(height, width, 3)`` resized as the
model's processor does, or an ``InvalidRequest`` (400) naming the input: only ``data:`` URLs
(remote URLs are not fetched), base64 payloads of at most ``max_image_bytes`` decoded bytes,
PNG/JPEG/WebP images and PDF files, at most ``max_image_pixels`` per image or rendered page
(checked from the header or the page size before anything is decoded: decompression bombs),
pages that exist. A corrupt file fails only its own request.

Images are converted to RGB (transparency composited onto white, as transformers'
``convert_to_rgb`` does), then resized as ``ColQwen2Processor`` does (``resize_page``: Qwen2-VL's
``smart_resize`` keeps the aspect ratio within the registry's min/max pixels in multiples of 28,
then bicubic resampling). PDF pages are rendered with PDFium (pypdfium2) at the model's
``pdf_dpi``, then treated as images. PDFium is not thread-safe: rendering holds one lock.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gateway.errors import InvalidRequest

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
PDF_TYPE = "application/pdf"
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(;[^,;]*)*),(?P<data>.*)", re.S)
_PDFIUM = threading.Lock()


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int


def decode_data_url(url: str, allowed: Sequence[str], param: str, limits: ImageLimits) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 ``data:`` URL whose type is in ``allowed``; 400 otherwise."""
    match = DATA_URL.fullmatch(url.strip())
    if match is None:
        raise InvalidRequest(
            f"{param} must be a base64 data URL (data:<type>;base64,...); remote URLs are not fetched.", param=param
        )
    media_type = match["type"].lower()
    if media_type not in allowed:
        raise InvalidRequest(
            f"{param} has media type {media_type!r}; supported: {', '.join(sorted(set(allowed)))}.",
            param=param, code="unsupported_media_type",
        )
    if ";base64" not in match["params"].lower():
        raise InvalidRequest(f"{param} must be base64-encoded (data:{media_type};base64,...).", param=param)
    payload = match["data"]
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise _too_large(param, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64.", param=param) from None
    if len(data) > limits.max_bytes:
        raise _too_large(param, limits)
    return media_type, data


def _too_large(param: str, limits: ImageLimits) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is larger than the limit of {limits.max_bytes} bytes.", param=param, code="image_too_large"
    )


def _check_pixels(width: float, height: float, param: str, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{param} is {int(width)}x{int(height)} pixels; at most {limits.max_pixels} pixels are allowed.",
            param=param, code="image_too_large",
        )


def open_image(data: bytes, media_type: str, param: str, limits: ImageLimits) -> Image.Image:
    """The decoded RGB image; 400 if it is corrupt, not the declared format, or too many pixels."""
    try:
        image = Image.open(io.BytesIO(data), formats=[IMAGE_TYPES[media_type]])
        _check_pixels(*image.size, param, limits)  # from the header, before decoding
        image.load()
    except InvalidRequest:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, if max_image_pixels is set above it
        raise InvalidRequest(
            f"{param}: the image is too large to decode.", param=param, code="image_too_large"
        ) from None
    except Exception:
        raise InvalidRequest(
            f"{param} could not be decoded as {IMAGE_TYPES[media_type]}; the data is corrupt or another format.",
            param=param, code="invalid_image",
        ) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.mode == "P" and "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def render_pdf(
    data: bytes, pages: Sequence[int] | None, dpi: int, max_pages: int, param: str, limits: ImageLimits
) -> list[tuple[int, Image.Image]]:
    """(1-based page number, RGB page) for each selected page (all when ``pages`` is None)."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        try:
            document = pdfium.PdfDocument(data)
        except Exception:
            raise InvalidRequest(f"{param} is not a readable PDF.", param=param, code="invalid_file") from None
        try:
            count = len(document)
            selected = list(pages) if pages is not None else list(range(1, count + 1))
            if not selected:
                raise InvalidRequest(f"{param}: no pages selected.", param=param)
            if len(selected) > max_pages:
                raise InvalidRequest(
                    f"{param} selects {len(selected)} pages; at most {max_pages} images and pages are allowed "
                    "per request.", param=param, code="too_many_images",
                )
            for number in selected:
                if not 1 <= number <= count:
                    raise InvalidRequest(f"{param}: page {number} does not exist (the PDF has {count}).", param=param)
            rendered = []
            scale = dpi / 72
            for number in selected:
                page = document[number - 1]
                width, height = page.get_size()  # points
                _check_pixels(width * scale, height * scale, f"{param} page {number}", limits)
                try:
                    bitmap = page.render(scale=scale)
                    rendered.append((number, bitmap.to_pil().convert("RGB")))
                except Exception:
                    raise InvalidRequest(
                        f"{param}: page {number} could not be rendered.", param=param, code="invalid_file"
                    ) from None
            return rendered
        finally:
            document.close()


@dataclass(frozen=True)
class PageGrid:
    """How a vision model's pages are resized: sides multiples of ``factor`` (patch x merge, 28 for
    Qwen2-VL) and ``min_pixels`` <= height x width <= ``max_pixels`` (registry ``vision``)."""

    factor: int
    min_pixels: int
    max_pixels: int


def smart_resize(height: int, width: int, grid: PageGrid) -> tuple[int, int]:
    """(height, width) a page is resized to, computed as transformers 5.19's Qwen2-VL ``smart_resize``
    does: each side rounded to a multiple of ``factor``, then, when that is outside the pixel
    range, both scaled by one factor (aspect kept) and floored (too large) or ceiled (too small)
    to multiples. ``ValueError`` when one side is over 200 times the other (as the processor)."""
    factor = grid.factor
    if (ratio := max(height, width) / min(height, width)) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > grid.max_pixels:
        beta = math.sqrt(height * width / grid.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < grid.min_pixels:
        beta = math.sqrt(grid.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_page(image: Image.Image, grid: PageGrid, param: str) -> np.ndarray:
    """uint8 (height, width, 3) of an RGB ``image`` resized as the model's processor does
    (``smart_resize``, then PIL bicubic, as ``Qwen2VLImageProcessorPil``); 400 for a page so
    narrow that no size within the grid's pixel range keeps its aspect ratio."""
    try:
        height, width = smart_resize(image.height, image.width, grid)
    except ValueError:
        height = width = 0
    if not height or height * width > grid.max_pixels:
        raise InvalidRequest(
            f"{param} is {image.width}x{image.height} pixels: too narrow to resize within "
            f"{grid.max_pixels} pixels in multiples of {grid.factor}.", param=param, code="invalid_image",
        )
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)

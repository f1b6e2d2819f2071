"""Image and PDF preprocessing for vision models (ColQwen2): the work of one image worker task.

These functions run in an image worker process (``gateway/image_worker.py``, started and replaced
by ``gateway/image_pool.py``), never in the gateway itself: a crash, a runaway page or a memory
blow-up in Pillow or PDFium costs a worker, not the gateway. ``prepare_part`` turns one image or
file part into uint8 RGB arrays ``(height, width, 3)`` resized as the model's processor does, one
page at a time (render or decode, resize, release: only one page is ever held at full size), or
raises ``InvalidRequest`` (400) naming the input:

- only ``data:`` URLs (remote URLs are not fetched), base64 payloads of at most ``max_bytes``
  decoded bytes, PNG/JPEG/WebP images and PDF files;
- at most ``max_pixels`` per image or rendered page and at most ``max_aspect_ratio`` between its
  sides (Qwen2-VL's processor refuses more than 200), checked from the header or the page size
  before anything is decoded (decompression bombs, 1 x 2,000,000 px strips);
- pages that exist, and pages that PDFium can load and render (a malformed page is a 400);
- ``admit(pages, pixels, param)``, a callback of the request, is asked before anything is
  decoded and may refuse (the request's page and pixel budgets, ``image_pool.RequestBudget``).

Images are read as transformers 5.19 reads them (``image_utils.load_image``: EXIF orientation
applied, then ``convert("RGB")``, which is also what the Qwen2-VL processors' ``convert_to_rgb``
does): palette and CMYK images convert as Pillow converts them, and alpha is dropped (transparent
pixels keep their stored colour, as the reference processor gives them). One deliberate
difference: 16-bit grayscale is scaled to 8 bits (``>> 8``); ``convert("RGB")`` clips it, so a
16-bit scan would be a white page. Then each image is resized as ``ColQwen2Processor`` does
(``core/pages.py: resize_page``: Qwen2-VL's ``smart_resize`` keeps the aspect ratio within the registry's min/max
pixels in multiples of 28, then bicubic resampling). PDF pages are
rendered with PDFium (pypdfium2) at the model's ``pdf_dpi``. PDFium is not thread-safe: a worker
process handles one document at a time.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from core.errors import InvalidRequest
from core.pages import PageGrid, resize_page

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
PDF_TYPE = "application/pdf"
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(;[^,;]*)*),(?P<data>.*)", re.S)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")

Admit = Callable[[int, int, str], None]  # (pages, pixels, param): raises InvalidRequest to refuse


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_aspect_ratio: float = 200.0


@dataclass(frozen=True)
class PartTask:
    """One image or file part of a request, as sent to a worker (picklable)."""

    kind: str  # "image" or "file"
    url: str  # the data URL
    pages: tuple[int, ...] | None  # file parts: 1-based pages, None for all
    param: str  # e.g. "input[2]", for errors
    dpi: int
    grid: PageGrid  # how pages are resized (the model's processor)
    limits: ImageLimits
    test_faults: bool = False  # GatewaySpec.image_test_faults: honour ';fault=crash' in the URL


def prepare_part(task: PartTask, admit: Admit) -> Iterator[tuple[int | None, np.ndarray]]:
    """(1-based page number or None for an image, uint8 page resized as the model's processor does)
    per image or page, in order, each resized before the next is decoded."""
    if task.test_faults and ";fault=crash" in task.url[:200]:
        os.kill(os.getpid(), signal.SIGSEGV)  # as a crash in a decoder's C code would
    if task.kind == "image":
        media_type, data = decode_data_url(task.url, list(IMAGE_TYPES), task.param, task.limits)
        image = open_image(data, media_type, task.param, task.limits, admit)
        yield None, resize_page(image, task.grid, task.param)
        return
    _, data = decode_data_url(task.url, [PDF_TYPE], task.param, task.limits)
    for number, page in render_pdf(data, task.pages, task.dpi, task.param, task.limits, admit):
        yield number, resize_page(page, task.grid, f"{task.param} page {number}")


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


def check_size(width: float, height: float, param: str, limits: ImageLimits) -> None:
    """400 ``image_too_large`` past ``max_pixels`` or ``max_aspect_ratio`` (or a side under 1 px)."""
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            f"{param} is {int(width)}x{int(height)} pixels; at most {limits.max_pixels} pixels are allowed.",
            param=param, code="image_too_large",
        )
    if min(width, height) < 1 or max(width, height) / min(width, height) > limits.max_aspect_ratio:
        raise InvalidRequest(
            f"{param} is {int(width)}x{int(height)} pixels; the longer side may be at most "
            f"{limits.max_aspect_ratio:g} times the shorter one.", param=param, code="image_too_large",
        )


def open_image(
    data: bytes, media_type: str, param: str, limits: ImageLimits, admit: Admit | None = None
) -> Image.Image:
    """The decoded RGB image; 400 if it is corrupt, not the declared format, or too large."""
    try:
        image = Image.open(io.BytesIO(data), formats=[IMAGE_TYPES[media_type]])
        check_size(*image.size, param, limits)  # from the header, before decoding
        if admit is not None:
            admit(1, image.width * image.height, param)
        image.load()
        image = ImageOps.exif_transpose(image)
    except InvalidRequest:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, if max_image_pixels is set above it
        raise InvalidRequest(
            f"{param}: the image is too large to decode.", param=param, code="image_too_large"
        ) from None
    except MemoryError:
        raise
    except Exception:
        raise InvalidRequest(
            f"{param} could not be decoded as {IMAGE_TYPES[media_type]}; the data is corrupt or another format.",
            param=param, code="invalid_image",
        ) from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image.convert("RGB")`` as transformers does, except 16-bit grayscale: scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        gray = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def render_pdf(
    data: bytes, pages: Sequence[int] | None, dpi: int, param: str, limits: ImageLimits, admit: Admit
) -> Iterator[tuple[int, Image.Image]]:
    """(1-based page number, RGB page) for each selected page (all when ``pages`` is None), in
    order, rendered one at a time. ``admit`` is asked for the selected pages before any renders,
    then for each page's pixels before it renders."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data)
    except Exception:
        raise InvalidRequest(f"{param} is not a readable PDF.", param=param, code="invalid_file") from None
    try:
        count = len(document)
        selected = list(pages) if pages is not None else list(range(1, count + 1))
        if not selected:
            raise InvalidRequest(f"{param}: no pages selected.", param=param)
        for number in selected:
            if not 1 <= number <= count:
                raise InvalidRequest(f"{param}: page {number} does not exist (the PDF has {count}).", param=param)
        admit(len(selected), 0, param)
        scale = dpi / 72
        for number in selected:
            yield number, _render_page(document, number, scale, param, limits, admit)
    finally:
        document.close()


def _render_page(document, number: int, scale: float, param: str, limits: ImageLimits, admit: Admit) -> Image.Image:
    where = f"{param} page {number}"
    page = bitmap = None
    try:
        page = document[number - 1]  # a page tree that claims more pages than it holds fails here
        width, height = page.get_size()  # points
        check_size(width * scale, height * scale, where, limits)
        admit(0, int(width * scale) * int(height * scale), param)
        bitmap = page.render(scale=scale)
        return bitmap.to_pil().convert("RGB")
    except (InvalidRequest, MemoryError):
        raise
    except Exception:
        raise InvalidRequest(f"{param}: page {number} could not be loaded or rendered.", param=param,
                             code="invalid_file") from None
    finally:
        for handle in (bitmap, page):
            if handle is not None:
                handle.close()


"""The page geometry of vision models (ColQwen2): the size a page is resized to before it is
embedded, computed as the model's processor does (Qwen2-VL's ``smart_resize``: aspect ratio kept,
sides multiples of ``PageGrid.factor``, area within the registry ``vision`` section's pixel range).

The gateway's image workers resize every page with ``resize_page`` (``gateway/images.py``) and
send it on the wire as uint8 ``(height, width, 3)`` (``core/wire.py``); the runner refuses a page
whose sides are not multiples of the factor or whose area is over ``max_pixels``
(``runners/ort/colqwen2.py``); the export's parity check resizes its sample pages with the same
function (``export/colqwen2.py``). One definition, so the three cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.errors import InvalidRequest


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
    narrow that no size within the grid's pixel range keeps its aspect ratio (``InvalidRequest``,
    code ``invalid_image``; ``param`` names the input in its message)."""
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

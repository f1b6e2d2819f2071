"""Pages as clients send them: a drawn page image, an OpenAI ``image_url`` part (a data URL), a PDF
``file`` part of several pages."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def page(color: tuple[int, int, int], size=(168, 224), label: str = "") -> Image.Image:
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 30, size[0] - 20, 70), fill=(255 - color[0], 30, 200))
    draw.text((10, 90), label or f"{color}", fill=(0, 0, 0))
    return image


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_part(image: Image.Image, fmt: str = "PNG") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(image, fmt)}}


def pdf_part(pages: list[Image.Image], selected: list[int] | None = None) -> dict:
    buffer = io.BytesIO()
    pages[0].save(buffer, "PDF", save_all=True, append_images=pages[1:], resolution=72)
    file = {"file_data": "data:application/pdf;base64," + base64.b64encode(buffer.getvalue()).decode()}
    if selected is not None:
        file["pages"] = selected
    return {"type": "file", "file": file}

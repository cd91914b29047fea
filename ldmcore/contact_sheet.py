"""A contact sheet: several sample grids on one PNG, each captioned with what made it
(``guidance=3 sampler=euler``), in rows and columns, so settings compare at a glance."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PAD = 8  # pixels between cells and around the sheet
CAPTION = 14  # caption font size, pixels
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def contact_sheet(tiles: list[tuple[str, Image.Image]], columns: int) -> Image.Image:
    """``tiles`` (caption, image) laid out ``columns`` to a row, each cell as wide as the widest
    image and captioned above it."""
    if not tiles:
        raise ValueError("a contact sheet needs at least one image")
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    font = _font()
    band = CAPTION + 6
    width = max(max(img.width for _, img in tiles), max(_text_width(font, c) for c, _ in tiles))
    height = max(img.height for _, img in tiles) + band
    sheet = Image.new("RGB", (PAD + columns * (width + PAD), PAD + rows * (height + PAD)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (caption, img) in enumerate(tiles):
        r, c = divmod(i, columns)
        x, y = PAD + c * (width + PAD), PAD + r * (height + PAD)
        draw.text((x, y), caption, fill=INK, font=font)
        sheet.paste(img.convert("RGB"), (x, y + band))
    return sheet


def save_contact_sheet(tiles: list[tuple[str, Path]], columns: int, out: Path) -> Path:
    """Read each grid PNG of ``tiles`` and write their contact sheet to ``out``."""
    images = []
    for caption, path in tiles:
        with Image.open(path) as img:
            images.append((caption, img.copy()))
    contact_sheet(images, columns).save(out)
    return out


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=CAPTION)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)

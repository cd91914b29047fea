"""Images a page sends for a plugin's file input: PNG/JPEG bytes (base64) or painted pixels.

A request never names a file on the server's disk. What the page sends is decoded in memory,
checked (format, size the widget declares, class indices of a label map) and only then saved
in the request's own folder, whose path becomes the value ``parse`` reads, as the command line
would pass it.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from ldmcore.conditioning import Widget, WidgetKind
from ldmcore.errors import ConfigError
from ldmcore.images import check_size
from ldmcore.schema import Strict

MAX_UPLOAD_BYTES = 8 * 2**20
MAX_SIDE = 4096  # painted maps and images of plugins that accept any size
FORMATS = {"PNG": ".png", "JPEG": ".jpg"}
SLOTS = {WidgetKind.LABEL_MAP: ("image",), WidgetKind.IMAGE: ("image",),
         WidgetKind.IMAGE_MASK: ("image", "mask")}
PAINTED = {WidgetKind.LABEL_MAP: ("image",), WidgetKind.IMAGE_MASK: ("mask",)}


class FileInput(Strict):
    """One file of a file input: ``png`` (base64 of a PNG or JPEG, a ``data:`` URL prefix
    allowed) or ``pixels`` (rows of integers: class indices of a painted label map, or a painted
    mask, 1 = painted)."""

    png: str | None = Field(None, max_length=MAX_UPLOAD_BYTES * 4 // 3 + 64)
    pixels: list[list[int]] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> FileInput:
        if (self.png is None) == (self.pixels is None):
            raise ValueError("give either png (the file, base64) or pixels (painted rows)")
        return self


def saved_value(plugin: str, widget: Widget, files: dict[str, FileInput], folder: Path) -> str:
    """Check the files of ``plugin``'s file input, save them in ``folder`` and return the
    command-line text the widget's ``value`` makes of their paths."""
    slots = SLOTS[widget.kind]
    missing = [s for s in slots if s not in files]
    extra = [s for s in files if s not in slots]
    if missing or extra:
        raise ConfigError(f"cond.{plugin}: the {widget.kind.value} input takes the files "
                          f"{', '.join(slots)}; {'missing ' + ', '.join(missing) if missing else ''}"
                          f"{'unknown ' + ', '.join(extra) if extra else ''}.")
    paths = {}
    for slot in slots:
        data, suffix = _checked(plugin, slot, widget, files[slot])
        folder.mkdir(parents=True, exist_ok=True)
        paths[slot] = folder / f"{plugin}-{slot}{suffix}"
        paths[slot].write_bytes(data)
    value = widget.value
    for slot, path in paths.items():
        value = value.replace("{" + slot + "}", str(path))
    return value


def _checked(plugin: str, slot: str, widget: Widget, item: FileInput) -> tuple[bytes, str]:
    """The bytes to save and their suffix, after every check."""
    what = f"cond.{plugin} {slot}"
    if item.pixels is not None:
        if slot not in PAINTED.get(widget.kind, ()):
            raise ConfigError(f"{what}: this input is uploaded as a file (png), not painted.")
        return _painted(what, widget, slot, item.pixels), ".png"
    text = item.png or ""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: png is not base64; send the file's bytes base64-encoded.") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise ConfigError(f"{what}: the file has {len(data)} bytes, more than the "
                          f"{MAX_UPLOAD_BYTES // 2**20} MiB the server takes.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_size(img, Path("upload"), what)
            img.load()
            fmt, mode, size = img.format, img.mode, img.size
            array = np.asarray(img) if widget.kind is WidgetKind.LABEL_MAP else None
    except ConfigError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ConfigError(f"{what}: not a readable image ({exc}); send a PNG or JPEG.") from None
    if fmt not in FORMATS:
        raise ConfigError(f"{what}: a {fmt} image; send a PNG or JPEG.")
    _check_shape(what, widget, (size[1], size[0]))
    if array is not None:
        if mode not in ("L", "P", "I", "I;16") or array.ndim != 2:
            raise ConfigError(f"{what}: a {mode} image; a label map is a single-channel PNG whose "
                              f"pixel values are class indices 0..{len(widget.choices) - 1}.")
        _check_labels(what, widget, array)
    return data, FORMATS[fmt]


def _painted(what: str, widget: Widget, slot: str, pixels: list[list[int]]) -> bytes:
    widths = {len(row) for row in pixels}
    if not pixels or len(widths) != 1:
        raise ConfigError(f"{what}: pixels must be rows of equal length.")
    try:
        array = np.asarray(pixels, dtype=np.int64)
    except OverflowError:
        raise ConfigError(f"{what}: pixel values must be small integers.") from None
    _check_shape(what, widget, array.shape)
    if widget.kind is WidgetKind.LABEL_MAP:
        _check_labels(what, widget, array)
    elif array.min() < 0 or array.max() > 1:
        raise ConfigError(f"{what}: a painted mask holds 0 (keep) or 1 (painted), got "
                          f"{int(array.min())}..{int(array.max())}.")
    else:
        array = array * 255
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_shape(what: str, widget: Widget, shape: tuple[int, ...]) -> None:
    if widget.size is not None and tuple(shape) != tuple(widget.size):
        raise ConfigError(f"{what}: the image is {shape[1]}x{shape[0]} pixels; this model takes "
                          f"{widget.size[1]}x{widget.size[0]} (width x height).")
    if max(shape) > MAX_SIDE:
        raise ConfigError(f"{what}: the image is {shape[1]}x{shape[0]} pixels; the server takes "
                          f"at most {MAX_SIDE} on a side.")


def _check_labels(what: str, widget: Widget, array: np.ndarray) -> None:
    n = len(widget.choices)
    if n and array.size and (array.min() < 0 or array.max() >= n):
        raise ConfigError(f"{what}: class index {int(array.max())} is outside 0..{n - 1} "
                          f"({', '.join(widget.choices)}).")

"""COCO segmentations as binary masks: polygons and run-length encodings (RLE), no pycocotools.

A COCO ``segmentation`` is either a list of polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixel
coordinates, or an RLE ``{"size": [h, w], "counts": ...}`` (used for ``iscrowd`` regions). RLE
runs alternate background and foreground, starting with background, over the pixels in
column-major order (down the first column, then the next). ``counts`` is a list of ints
(uncompressed) or COCO's compressed string: each run is written in 5-bit groups, least
significant first, one character (48 + group) per group, bit 0x20 of a character meaning "more
groups follow" and bit 0x10 of the last group the sign; from the fourth run on, a run is stored
as its difference from the run two before it.

Pixel ``(row, col)`` covers the square ``[col, col + 1) x [row, row + 1)``; a polygon covers the
pixels whose centres lie inside it (even-odd rule), so the rectangle polygon of a COCO box
``[x, y, w, h]`` with integer corners covers exactly ``w x h`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class MaskFormatError(ValueError):
    """A segmentation that is not a valid polygon list or RLE (the caller adds where it is)."""


def decode_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string."""
    counts: list[int] = []
    value, shift = 0, 0
    for char in text:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise MaskFormatError(f"character {char!r} cannot occur in a compressed RLE string")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:  # sign of the last group: extend it
            value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    if shift:
        raise MaskFormatError("the compressed RLE string ends in the middle of a run")
    return counts


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """A (h, w) bool mask from an RLE dict (``counts`` a list of ints or a compressed string)."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)):
        raise MaskFormatError(f"RLE 'size' must be [height, width], got {size!r}")
    h, w = size
    if isinstance(counts, str):
        runs = decode_counts(counts)
    elif isinstance(counts, list) and all(isinstance(v, int) for v in counts):
        runs = counts
    else:
        raise MaskFormatError("RLE 'counts' must be a list of ints or a compressed string")
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise MaskFormatError(f"RLE runs cover {sum(runs)} pixels (some negative: "
                              f"{any(r < 0 for r in runs)}), the size {h}x{w} has {h * w}")
    values = np.arange(len(runs)) % 2 == 1  # background first
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T.copy()


def rasterize_polygon(coords: Sequence[float], height: int, width: int) -> np.ndarray:
    """A (height, width) bool mask of the pixels whose centres lie inside the polygon.

    ``coords`` is COCO's flat ``[x1, y1, x2, y2, ...]``. A scanline fill: for each pixel row,
    the polygon's edges are cut at the row's centre line and the spans between pairs of
    crossings are filled (even-odd rule).
    """
    if len(coords) < 6 or len(coords) % 2:
        raise MaskFormatError(f"a polygon needs at least 3 (x, y) points as a flat list, got "
                              f"{len(coords)} numbers")
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    mask = np.zeros((height, width), dtype=bool)
    rows = np.arange(height)
    centres = rows + 0.5
    # edge e crosses the centre line of row r when it spans it half-open, so a vertex on the
    # line counts once and horizontal edges never
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (lo[None, :] <= centres[:, None]) & (centres[:, None] < hi[None, :])
    slope = np.divide(x1 - x0, y1 - y0, out=np.zeros_like(x0), where=y1 != y0)
    at = x0[None, :] + (centres[:, None] - y0[None, :]) * slope[None, :]
    for r in rows[crosses.any(1)]:
        xs = np.sort(at[r, crosses[r]])
        for a, b in zip(xs[0::2], xs[1::2]):
            # pixel c is inside when a <= c + 0.5 < b
            start, stop = int(np.ceil(a - 0.5)), int(np.ceil(b - 0.5))
            mask[r, max(start, 0):min(stop, width)] = True
    return mask


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A (height, width) bool mask from a COCO ``segmentation`` (polygons or RLE).

    Several polygons of one object are united. An RLE must have the image's size.
    """
    if isinstance(segmentation, dict):
        mask = decode_rle(segmentation)
        if mask.shape != (height, width):
            raise MaskFormatError(f"RLE size {list(mask.shape)} differs from the image's "
                                  f"[{height}, {width}]")
        return mask
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), dtype=bool)
        for polygon in segmentation:
            if not (isinstance(polygon, list) and all(isinstance(v, (int, float)) for v in polygon)):
                raise MaskFormatError("polygons must be flat lists of numbers [x1, y1, x2, y2, ...]")
            mask |= rasterize_polygon(polygon, height, width)
        return mask
    raise MaskFormatError(f"a segmentation is a list of polygons or an RLE dict, got "
                          f"{type(segmentation).__name__}")

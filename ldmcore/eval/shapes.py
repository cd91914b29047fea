"""Read shapes back from an image, and the fidelity metrics built on that reading.

The shapes data uses seven pure colours on black, so a generated image can be read without a
learned model: pixels near each colour form connected components; a component's box is its
extent, and its kind is the ideal shape drawn in that box (inscribed circle, the full square,
the apex-up triangle of the generator) that overlaps it best (IoU). Matching whole templates
rather than thresholding how much of the box is filled keeps softened edges and corners from
flipping a square or triangle into a circle. The reader is independent of the generator and is
checked on real scenes, sharp and blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ldmcore.data.shapes import COLOR_NAMES, COLORS, SHAPES
from ldmcore.images import to_uint8

MIN_AREA_FRACTION = 0.004  # components smaller than this share of the image are noise
# The generator orders a caption by its boxes' exact centres; the reader sees pixel extents,
# which move a centre by a pixel or so. Shapes stacked with centres this close have no
# readable left-to-right order, so either order of them reads as the caption.
ORDER_TIE_PIXELS = 2.0


@dataclass(frozen=True)
class Detection:
    color: int
    kind: int  # index into SHAPES
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1
    pixels: np.ndarray  # (H, W) bool


def templates(height: int, width: int) -> dict[int, np.ndarray]:
    """Ideal masks of each kind filling an ``height`` x ``width`` box (pixel centres)."""
    y = (np.arange(height)[:, None] + 0.5) / height  # 0 top .. 1 bottom
    x = (np.arange(width)[None, :] + 0.5) / width
    circle = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    square = np.ones((height, width), dtype=bool)
    triangle = np.abs(x - 0.5) <= y / 2  # apex at the top centre, base along the bottom
    return {SHAPES.index("circle"): circle, SHAPES.index("square"): square,
            SHAPES.index("triangle"): triangle}


def _kind(component: np.ndarray) -> int:
    """The kind whose template in the component's box has the highest IoU with it."""
    h, w = component.shape
    scores = {kind: (component & t).sum() / float((component | t).sum()) for kind, t in templates(h, w).items()}
    return max(scores, key=scores.get)


def detect(image: np.ndarray, tolerance: int = 100) -> list[Detection]:
    """Shapes in an (H, W, 3) uint8 image, left to right."""
    h, w, _ = image.shape
    rgb = image.astype(np.int32)
    found: list[Detection] = []
    for ci, name in enumerate(COLOR_NAMES):
        target = np.array(COLORS[name])
        near = (np.abs(rgb - target).max(-1) < tolerance) & (rgb.max(-1) > 100)
        labelled, count = ndimage.label(near)
        for comp in range(1, count + 1):
            pixels = labelled == comp
            area = int(pixels.sum())
            if area < MIN_AREA_FRACTION * h * w:
                continue
            ys, xs = np.nonzero(pixels)
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            kind = _kind(pixels[y0:y1, x0:x1])
            found.append(Detection(ci, kind, (x0 / w, y0 / h, x1 / w, y1 / h), pixels))
    return sorted(found, key=lambda d: (d.box[0] + d.box[2]) / 2)


def phrase(d: Detection) -> str:
    return f"a {COLOR_NAMES[d.color]} {SHAPES[d.kind]}"


def caption_of(detections: list[Detection]) -> str:
    return " and ".join(phrase(d) for d in detections)


def order_ties(detections: list[Detection], width: int) -> list[list[Detection]]:
    """Left-to-right detections cut into runs whose neighbouring centres lie within
    ``ORDER_TIE_PIXELS`` of each other: the order inside a run is not readable."""
    runs: list[list[Detection]] = []
    last = None
    for d in detections:
        centre = (d.box[0] + d.box[2]) / 2 * width
        if runs and centre - last < ORDER_TIE_PIXELS:
            runs[-1].append(d)
        else:
            runs.append([d])
        last = centre
    return runs


def caption_match(image: np.ndarray, caption: str) -> bool:
    """Do the shapes read from the image, left to right, say exactly the caption?

    Every phrase must be read, none added, in the caption's order; shapes stacked so that
    their centres are within ``ORDER_TIE_PIXELS`` may come in either order."""
    wanted = caption.split(" and ") if caption else []
    found = detect(image)
    if len(found) != len(wanted):
        return False
    start = 0
    for run in order_ties(found, image.shape[1]):
        if sorted(phrase(d) for d in run) != sorted(wanted[start:start + len(run)]):
            return False
        start += len(run)
    return True


def caption_match_rate(images: torch.Tensor, captions: list[str]) -> float:
    """Share of ``images`` (B, C, H, W) in [-1, 1] whose shapes say their caption
    (``caption_match``): the reading every shapes plugin's fidelity metric is built on."""
    return float(np.mean([caption_match(p, c) for p, c in zip(to_uint8(images), captions)]))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def layout_iou(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> float:
    """Mean over requested boxes of the best IoU with a detected shape of the same kind."""
    found = detect(image)
    scores = [max((box_iou(tuple(box), d.box) for d in found if d.kind == int(label)), default=0.0)
              for box, label in zip(boxes, labels)]
    return float(np.mean(scores)) if scores else 1.0


def segmentation(image: np.ndarray) -> np.ndarray:
    """(H, W) map: 0 background, 1 + kind where a shape was read."""
    seg = np.zeros(image.shape[:2], dtype=np.int64)
    for d in detect(image):
        seg[d.pixels] = d.kind + 1
    return seg


def mean_iou(pred: np.ndarray, target: np.ndarray, classes: int = len(SHAPES) + 1) -> float:
    """mIoU over the classes present in either map."""
    ious = []
    for c in range(classes):
        p, t = pred == c, target == c
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    return float(np.mean(ious))

"""How much of shapes_inpaint's caption target can any restoration reach? Measured on the eval's holes.

``ldm eval`` reads the caption of each restored scene with the shape reader. A shape that the
hole hides wholly leaves no trace in the known pixels (not its colour, kind or even its
presence), so no restoration says that scene's caption except by a lucky guess. This script
takes ``ldm eval``'s own held-out scenes and holes (seed 0, the experiment's config) and counts,
per scene, how much of each shape stays visible; then it reads, with the same reader, oracles
that restore the hole from the true scene but leave out the shapes with too little in view:

* ``visible > 0``: every shape with at least one visible pixel restored exactly, wholly hidden
  ones left as background: the best any restoration can do without guessing a hidden shape;
* ``visible >= X%``: the same, leaving out shapes of which less than X% of the pixels are visible
  (a few pixels of colour at a hole's edge rarely tell a circle from a square): a bracket of
  how much the near-hidden shapes cost.

Each oracle is read for its caption match and for its PSNR inside the hole, the two metrics of
``ldm eval``: a restoration that gets every shape with a visible pixel exactly right still loses
the wholly hidden ones.

A shape's pixels are those near its colour (the reader's test) whose centres lie in its box
(one pixel of margin for the resized edge): shapes never overlap, so no pixel is counted twice.

    python -m benchmarks.inpaint_ceiling [--n 256]

Results: ``benchmarks/results/inpaint_ceiling/full.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.support.results import machine, markdown_table, write_result  # noqa: E402
from benchmarks.support.shapes_holes import eval_holes  # noqa: E402

THRESHOLDS = (0.0, 0.05, 0.10, 0.25)  # visible share a shape needs to count as restorable


def shape_pixels(image: torch.Tensor, boxes: torch.Tensor, colors: torch.Tensor) -> list[np.ndarray]:
    """(H, W) bool per shape of one scene: its colour's pixels inside its box (+1 pixel)."""
    from ldmcore.data.shapes import COLOR_NAMES, COLORS
    from ldmcore.images import to_uint8

    rgb = to_uint8(image[None])[0].astype(np.int32)
    h, w, _ = rgb.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out = []
    for box, color in zip(boxes.tolist(), colors.tolist()):
        x0, y0, x1, y1 = box[0] * w - 1, box[1] * h - 1, box[2] * w + 1, box[3] * h + 1
        near = (np.abs(rgb - np.array(COLORS[COLOR_NAMES[color]])).max(-1) < 100) & (rgb.max(-1) > 100)
        out.append(near & (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="held-out scenes (ldm eval's n)")
    args = parser.parse_args()
    from ldm_inpaint.metric import hole_psnr
    from ldmcore.eval.shapes import caption_match_rate
    from ldmcore.hole_fill import CONVERGED_SWEEPS, blur_fill

    batch, image, hole = eval_holes(args.n)
    inside = hole[:, 0].numpy() > 0.5
    visible = []  # per scene: the visible share of each shape
    pixels = []
    for i in range(args.n):
        shapes = shape_pixels(image[i], batch["bboxes"][i], batch["colors"][i])
        pixels.append(shapes)
        visible.append([float((p & ~inside[i]).sum()) / max(int(p.sum()), 1) for p in shapes])
    least = np.array([min(v, default=1.0) for v in visible])
    hidden_share = {f"a shape with visible share <= {t:.0%}" if t else "a shape wholly hidden":
                    float(np.mean(least <= t)) for t in THRESHOLDS}
    hidden_share["a shape with any pixel hidden"] = float(np.mean(least < 1.0))

    fill = blur_fill(image, hole, CONVERGED_SWEEPS)
    rows = {"harmonic fill (the bar)": (caption_match_rate(fill, batch["caption"]), hole_psnr(fill, image, hole)),
            "the true scenes (the reader's own rate)": (caption_match_rate(image, batch["caption"]), None)}
    for t in THRESHOLDS:
        oracle = image.clone()
        for i in range(args.n):
            for p, share in zip(pixels[i], visible[i]):
                if share <= t:  # too little in view: left as the black background
                    oracle[i][:, torch.from_numpy(p & inside[i])] = -1.0
        name = "oracle: shapes with any visible pixel restored" if t == 0 else \
            f"oracle: shapes with more than {t:.0%} visible restored"
        rows[name] = (caption_match_rate(oracle, batch["caption"]), hole_psnr(oracle, image, hole))

    hole_share = float(inside.mean())
    title = (f"shapes_inpaint's caption ceiling on {args.n} held-out scenes and ldm eval's holes "
             f"(`python -m benchmarks.inpaint_ceiling --n {args.n}`); holes cover {hole_share:.1%} "
             f"of the pixels.")
    body = (markdown_table(["scenes with ...", "share"], [[k, f"{v:.3f}"] for k, v in hidden_share.items()])
            + "\n\n" + markdown_table(["restoration", "caption match", "hole PSNR dB"],
                                      [[k, f"{c:.3f}", "-" if p is None else f"{p:.2f}"] for k, (c, p) in rows.items()]))
    write_result("inpaint_ceiling", "full", {"machine": machine(), "held_out_scenes": args.n,
                                             "hole_pixel_share": hole_share, "scenes": hidden_share,
                                             "caption_match": {k: c for k, (c, _) in rows.items()},
                                             "hole_psnr_db": {k: p for k, (_, p) in rows.items()}}, f"{title}\n\n{body}")


if __name__ == "__main__":
    main()

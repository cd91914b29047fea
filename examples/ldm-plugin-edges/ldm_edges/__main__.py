"""``python -m ldm_edges PHOTO.png EDGES.png [--size 32] [--low 50 --high 150]``: write the
Canny edge map of any picture, ready for ``ldm sample ... cond.edges=EDGES.png``."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from PIL import Image

from ldm_edges.encoder import canny


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ldm_edges", description=__doc__)
    parser.add_argument("image", help="any picture PIL can read")
    parser.add_argument("out", help="where to write the edge map (PNG)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize to SIZE x SIZE first (the model's data.image_size)")
    parser.add_argument("--low", type=int, default=50)
    parser.add_argument("--high", type=int, default=150)
    args = parser.parse_args(argv)
    try:
        with Image.open(args.image) as img:
            img = img.convert("RGB")
            if args.size:
                img = img.resize((args.size, args.size), Image.BICUBIC)
            pixels = np.asarray(img, dtype=np.float32) / 127.5 - 1
    except OSError as exc:
        print(f"python -m ldm_edges: error: cannot read {args.image!r}: {exc}", file=sys.stderr)
        return 2
    edges = canny(torch.from_numpy(pixels).permute(2, 0, 1)[None], args.low, args.high)[0, 0]
    Image.fromarray((edges.numpy() * 255).astype(np.uint8)).save(args.out)
    print(f"edge map: {args.out} ({int(edges.sum())} edge pixels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

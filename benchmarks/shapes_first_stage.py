"""Shapes restoration: latents or pixels? The shapes first stage against the bars to beat.

A latent model can at best return the first stage's reconstruction of the true scene, so that
reconstruction is the ceiling of ``shapes_sr4x`` and ``shapes_inpaint`` in latent space. This
reads it on the held-out scenes ``ldm eval`` samples from, beside what the two experiments must
beat: bicubic upsampling of the 8x8 input (+ 3 dB) and the harmonic fill of holes over shapes
(+ 3 dB inside the hole), each with the caption match the shape reader gives it.

    python -m benchmarks.shapes_first_stage --autoencoder runs/bench/shapes_autoencoder/checkpoints/autoencoder.safetensors

Results: ``benchmarks/results/shapes_first_stage/full.json`` and ``.md`` (a first stage to read
is made by ``python -m benchmarks.plugins shapes_layout``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.support.results import machine, markdown_table, write_result
from benchmarks.support.shapes_holes import eval_holes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--autoencoder", type=Path, required=True, help="the shapes stage-1 checkpoint")
    parser.add_argument("--n", type=int, default=256, help="held-out scenes (ldm eval's n)")
    args = parser.parse_args()
    from ldm_inpaint.metric import hole_psnr
    from ldm_lowres.encoder import consistent
    from ldm_lowres.metric import upsampled
    from ldmcore.build import load_autoencoder
    from ldmcore.config import load
    from ldmcore.eval.pixels import psnr
    from ldmcore.eval.shapes import caption_match_rate
    from ldmcore.hole_fill import CONVERGED_SWEEPS, blur_fill

    batch, image, hole = eval_holes(args.n)
    ae = load_autoencoder(load(["experiment=shapes_layout"]), args.autoencoder).eval()
    with torch.no_grad():
        rebuilt = ae.images(ae.latents(image, torch.Generator().manual_seed(0))).clamp(-1, 1)
    low = F.avg_pool2d(image, 4)
    up = upsampled(low, image.shape[-2:])
    fill = blur_fill(image, hole, CONVERGED_SWEEPS)
    pasted = torch.where(hole > 0.5, rebuilt, image)
    rows = {
        "first stage: reconstruction of the true scene (latent SR's ceiling)": (psnr(rebuilt, image), None, rebuilt),
        "first stage: reconstruction inside the hole, known pixels pasted back (latent inpainting's ceiling)":
            (None, hole_psnr(pasted, image, hole), pasted),
        "bicubic upsampling of the 8x8 input (shapes_sr4x's bar)": (psnr(up, image), None, up),
        "bicubic, then consistent with the 8x8 input": (psnr(consistent(up, low), image), None, consistent(up, low)),
        "harmonic fill of the hole (shapes_inpaint's bar)": (None, hole_psnr(fill, image, hole), fill),
        "the true scenes (the shape reader's own rate)": (None, None, image),
    }
    table = {name: {"psnr_db": None if p is None else float(p.mean()), "hole_psnr_db": h,
                    "caption_match": caption_match_rate(x, batch["caption"])}
             for name, (p, h, x) in rows.items()}
    def cell(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    title = (f"Shapes restoration on {args.n} held-out scenes (`python -m benchmarks.shapes_first_stage "
             f"--autoencoder ... --n {args.n}`): the shapes first stage's reconstruction, the ceiling "
             f"of a latent model, against the bars.")
    body = markdown_table(["images", "PSNR dB", "hole PSNR dB", "caption match"],
                          [[name, cell(r["psnr_db"], 2), cell(r["hole_psnr_db"], 2), cell(r["caption_match"], 3)]
                           for name, r in table.items()])
    write_result("shapes_first_stage", "full", {"machine": machine(), "held_out_scenes": args.n,
                                                "autoencoder": str(args.autoencoder), "rows": table},
                 f"{title}\n\n{body}")


if __name__ == "__main__":
    main()

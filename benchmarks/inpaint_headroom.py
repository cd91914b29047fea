"""Model-free hole fills against photos_inpaint's bar, on the eval's own held-out holes.

``ldm eval`` scores inpainting inside the hole beside a blur fill (the converged harmonic fill
of ``ldmcore.hole_fill``). This script reads the fills a user could use without a model on the
same held-out crops and holes (``ldm eval``'s, seed 0), so the bar and its headroom are
measured, not assumed:

* blur fills: 50 plain 3x3 sweeps from zero (an unconverged blur fill), the multigrid fill
  at 20 sweeps per level (the plugin's base) and at 200 (the eval's baseline);
* scikit-image's biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``), which also
  continues gradients across the border;
* with ``--run``, a trained photos_inpaint model's own estimate of the mean: its denoised output
  from pure noise at the schedule's largest sigma, pasted back as samples are.

    python -m benchmarks.inpaint_headroom [--n 64] [--run runs/bench/photos_inpaint]

Results: ``benchmarks/results/inpaint_headroom/<variant>.json`` and ``.md`` (variant ``full`` unless
named; a run to read is made by ``python -m benchmarks.plugins photos_inpaint``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.support.headroom import model_mean, write_table  # noqa: E402


def biharmonic(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    from skimage.restoration import inpaint_biharmonic

    filled = [inpaint_biharmonic(((im.permute(1, 2, 0).numpy() + 1) / 2).astype(np.float64),
                                 h[0].numpy() > 0.5, channel_axis=-1) for im, h in zip(image, hole)]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).float() * 2 - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="held-out crops (ldm eval's n)")
    parser.add_argument("--run", type=Path, default=None, help="a trained photos_inpaint run to read too")
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    from ldmcore.build import build_model
    from ldmcore.config import load
    from ldm_inpaint.metric import hole_psnr
    from ldmcore.eval.tasks import held_out_batch
    from ldmcore.hole_fill import CONVERGED_SWEEPS, SWEEPS_PER_LEVEL, blur_fill, relax

    cfg = load(["experiment=photos_inpaint"])
    encoder = build_model(cfg).conditioner.encoders["inpaint"]
    torch.manual_seed(0)  # then the holes ldm eval draws (its seed 0)
    image, hole = encoder.batch_value(held_out_batch(cfg, args.n))
    bar = f"blur fill, {CONVERGED_SWEEPS} sweeps per level (ldm eval's baseline)"
    fills = {
        "blur, 50 plain sweeps from grey (the old baseline)": relax(torch.zeros_like(image), image, hole > 0.5, 50),
        f"blur fill, {SWEEPS_PER_LEVEL} sweeps per level (the plugin's base)": blur_fill(image, hole),
        bar: blur_fill(image, hole, CONVERGED_SWEEPS),
        "biharmonic (scikit-image)": biharmonic(image, hole),
    }
    if args.run is not None:
        fills[f"model's mean estimate (x0 at the largest sigma), {args.run.name}"] = model_mean(
            args.run, {"inpaint": (image, hole)}, args.n)
    rows = {name: hole_psnr(x, image, hole) for name, x in fills.items()}
    run = "" if args.run is None else f" --run {args.run}"
    write_table("inpaint_headroom", args.variant, f"photos_inpaint: PSNR inside the hole on ldm eval's {args.n} held-out "
                f"crops and holes (`python -m benchmarks.inpaint_headroom --n {args.n}{run}`).", "fill",
                rows, bar, held_out_crops=args.n)

if __name__ == "__main__":
    main()

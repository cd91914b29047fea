"""How well trained shapes_inpaint runs denoise inside the hole, noise level by noise level.

One sampled image per hole is a noisy reading of a model (n=64 draws differ by a few hundredths
of caption match between seeds). This reads what each run has learned without sampling: the
true scene's residual from the fill, noised to ``sigma`` with fixed noise, and the model's
estimate of the clean scene from it (the x0 a sampler steps toward), scored by PSNR inside the
hole on ``ldm eval``'s own held-out scenes and holes. At the largest sigma it is the model's
guess of the posterior mean; at small sigma, how much noise it takes out. Beside it: the
noised input itself (what doing nothing reads).

    python -m benchmarks.inpaint_denoiser --run runs/A --run runs/B [--n 64] [--variant NAME]

Results: ``benchmarks/results/inpaint_denoiser/<variant>.json`` and ``.md`` (``full`` unless
named).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.support.results import machine, markdown_table, write_result  # noqa: E402
from benchmarks.support.shapes_holes import eval_holes  # noqa: E402

SIGMAS = (14.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.05)


def hole_psnr_by_sigma(run: Path, batch: dict, image: torch.Tensor, hole: torch.Tensor
                       ) -> dict[str, list[float]]:
    """PSNR in the hole of the run's x0 estimate (``x0``) and of its noised input (``input``)
    at each of ``SIGMAS``, the noise drawn once (seed 1) for every run."""
    from benchmarks.support.runs import load_trained_run
    from ldm_inpaint.metric import hole_psnr
    from ldmcore.diffusion.guidance import Guidance
    from ldmcore.hardware import choose_precision

    _, model, _ = load_trained_run(run, "ldm train experiment=shapes_inpaint")
    n = image.shape[0]
    values = model.conditioner.resolve({**batch, "inpaint": (image, hole)})
    space = model.diffusion_space(values)
    clean = space.into(image)
    denoiser = model.guided_denoiser(values, n, Guidance(scale=1.0))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))

    def as_image(z: torch.Tensor) -> torch.Tensor:
        return model.conditioner.finish(model.autoencoder.images(space.out(z)).clamp(-1, 1), values)

    out: dict[str, list[float]] = {"x0": [], "input": []}
    for sigma in SIGMAS:
        x = (clean + sigma * noise).double()
        with torch.inference_mode(), choose_precision("auto").autocast():
            x0 = denoiser(x, torch.full((n,), sigma, dtype=torch.float64)).float()
        out["x0"].append(hole_psnr(as_image(x0), image, hole))
        out["input"].append(hole_psnr(as_image(x.float()), image, hole))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a shapes_inpaint run (repeat)")
    parser.add_argument("--n", type=int, default=64, help="held-out scenes (ldm eval's n)")
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    batch, image, hole = eval_holes(args.n)
    rows = {str(run): hole_psnr_by_sigma(run, batch, image, hole) for run in args.run}
    first = next(iter(rows.values()))
    header = ["x0 estimate from", *(f"sigma {s:g}" for s in SIGMAS)]
    cells = [["the noised input itself", *(f"{v:.2f}" for v in first["input"])]]
    cells += [[f"`{run}`", *(f"{v:.2f}" for v in r["x0"])] for run, r in rows.items()]
    title = (f"Hole PSNR (dB) of each run's x0 estimate from the true scene noised to sigma, on "
             f"{args.n} of ldm eval's held-out holes (`python -m benchmarks.inpaint_denoiser`).")
    write_result("inpaint_denoiser", args.variant,
                 {"machine": machine(), "held_out_scenes": args.n, "sigmas": list(SIGMAS), "runs": rows},
                 f"{title}\n\n{markdown_table(header, cells)}")


if __name__ == "__main__":
    main()

"""What the two headroom benchmarks share: a trained run's own mean estimate, and the table.

``sr_headroom.py`` and ``inpaint_headroom.py`` each score estimators that need no model against
their experiment's baseline; both read a trained run's estimate of the posterior mean beside
them and write the same JSON and Markdown table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from run import RESULTS, machine


def model_mean(run: Path, values: dict, n: int) -> torch.Tensor:
    """The run's denoised estimate, for ``n`` samples of condition ``values``, from pure noise at
    its largest sigma (the x0 the first sampling step reads), finished as samples are."""
    from ldmcore.diffusion.guidance import Guidance
    from ldmcore.runfolder import load_run
    from ldmcore.hardware import choose_precision

    _, model, _ = load_run(run)
    values = model.conditioner.resolve(values)
    space = model.diffusion_space(values)
    denoiser = model.guided_denoiser(values, n, Guidance(scale=1.0))
    sigma = float(model.schedule.sigmas[-1])
    noise = torch.randn((n, *model.latent_shape()), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), choose_precision("auto").autocast():
        x0 = denoiser(noise.double() * (1 + sigma ** 2) ** 0.5,
                      torch.full((n,), sigma, dtype=torch.float64)).float()
    images = model.autoencoder.images(space.out(x0)).clamp(-1, 1)
    return model.conditioner.finish(images, values)


def write_table(stem: str, title: str, column: str, rows: dict[str, float], reference: str,
                **facts: object) -> None:
    """``results/<stem>.json`` (rows and ``facts``) and ``.md`` (rows against ``reference``)."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"machine": machine(), **facts, "psnr_db": rows}, indent=1))
    lines = [title, "", f"| {column} | PSNR dB | vs {reference} |", "|---|---|---|"]
    lines += [f"| {name} | {v:.2f} | {v - rows[reference]:+.2f} |" for name, v in rows.items()]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

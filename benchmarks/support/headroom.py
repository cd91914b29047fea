"""What the two headroom benchmarks share: a trained run's own mean estimate, and the table.

``benchmarks.sr_headroom`` and ``benchmarks.inpaint_headroom`` each score estimators that need
no model against their experiment's baseline; both read a trained run's estimate of the
posterior mean beside them and write the same JSON and Markdown table.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.support.results import machine, markdown_table, write_result
from benchmarks.support.runs import load_trained_run


def model_mean(run: Path, values: dict, n: int) -> torch.Tensor:
    """The run's denoised estimate, for ``n`` samples of condition ``values``, from pure noise at
    its largest sigma (the x0 the first sampling step reads), finished as samples are."""
    from ldmcore.diffusion.guidance import Guidance
    from ldmcore.hardware import choose_precision

    _, model, _ = load_trained_run(run, "python -m benchmarks.plugins")
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


def write_table(benchmark: str, variant: str, title: str, column: str, rows: dict[str, float],
                reference: str, **facts: object) -> None:
    """The benchmark's ``<variant>.json`` (rows and ``facts``) and ``.md`` (each row's PSNR and
    its difference from the ``reference`` row)."""
    table = markdown_table([column, "PSNR dB", f"vs {reference}"],
                           [[name, f"{v:.2f}", f"{v - rows[reference]:+.2f}"] for name, v in rows.items()])
    write_result(benchmark, variant, {"machine": machine(), **facts, "psnr_db": rows},
                 f"{title}\n\n{table}\n")

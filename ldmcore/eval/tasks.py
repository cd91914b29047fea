"""`ldm eval` for the built-in tasks: sample from held-out conditions, score each plugin.

Held-out conditions come from data the model never trained on (shapes scenes of another seed,
the held-out strip of the photos). Each enabled plugin with a metric is scored:

* text: fraction of samples whose shapes, read back from the image, say the caption;
* layout: mean IoU of requested boxes with the detected shapes' boxes;
* segmap: mIoU of the requested map with the generated image's segmentation;
* lowres: PSNR/SSIM against the high-resolution crop, beside bicubic upsampling's;
* inpaint: PSNR inside the hole beside a blur fill's (the converged harmonic fill of
  ``ldmcore.hole_fill``), and the known region's max error.

With ``average=K`` > 1 the pixel metrics (lowres, inpaint) are also given for the mean of K
samples per condition (keys ``*_mean_of_samples``). PSNR rewards the posterior mean, and one
sample from a posterior is off by about twice its variance, so a sampler's single draws score
under a blurrier regression of equal quality; the mean of K draws estimates the posterior mean
the model has learned, and shows how much of a gap is sampling rather than the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldmcore.data import build_dataset, collate
from ldmcore.eval.pixels import psnr, ssim
from ldmcore.eval.shapes import caption_match, layout_iou, mean_iou, segmentation
from ldmcore.hole_fill import CONVERGED_SWEEPS, blur_fill
from ldmcore.images import save_grid, to_uint8
from ldmcore.sample import load_run
from ldmcore.hardware import choose

HELD_OUT_SEED = 1_000_003


def held_out_batch(cfg: Any, n: int) -> dict[str, Any]:
    d = cfg.data
    kwargs = {**d.dataset_kwargs(), "num_items": n, "hflip": False, "shift": 0.0}
    if d.name == "shapes":
        kwargs["seed"] = HELD_OUT_SEED
    elif d.name == "photos":
        kwargs["holdout"] = True
    dataset = build_dataset(d.name, **kwargs)
    return collate([dataset[i] for i in range(n)])


def shape_scores(plugins: Any, batch: dict[str, Any], images: torch.Tensor) -> dict[str, float]:
    """The shapes metric of each of ``plugins`` (text, layout, segmap) that is enabled, on
    ``images`` generated from the held-out ``batch``."""
    pixels = to_uint8(images)
    scores: dict[str, float] = {}
    if "text" in plugins:
        scores["text_caption_match"] = float(np.mean([caption_match(p, c) for p, c in zip(pixels, batch["caption"])]))
    if "layout" in plugins:
        scores["layout_mean_iou"] = float(np.mean([layout_iou(p, b.numpy(), lab.numpy()) for p, b, lab in
                                                   zip(pixels, batch["bboxes"], batch["labels"])]))
    if "segmap" in plugins:
        scores["segmap_miou"] = float(np.mean([mean_iou(segmentation(p), m.numpy()) for p, m in
                                               zip(pixels, batch["mask"])]))
    return scores


def evaluate_run(run_dir: Path, n: int = 64, steps: int | None = None, seed: int = 0,
                 out: Path | None = None, average: int = 1, precision: str = "auto",
                 threads: int | str = "auto") -> dict[str, Any]:
    cfg, model, _ = load_run(run_dir)
    mixed = choose(precision, threads, next(model.unet.parameters()).device).precision
    torch.manual_seed(seed)  # random holes of the inpaint plugin
    batch = held_out_batch(cfg, n)
    values = model.conditioner.resolve(batch)
    plan = model.sampling if steps is None else model.sampling.but(steps=steps)  # the run's own

    def draw(k: int) -> torch.Tensor:
        """Samples of noise seed ``seed + k`` for every held-out condition."""
        noise = torch.randn((n, *model.latent_shape()), generator=torch.Generator().manual_seed(seed + k))
        with mixed.autocast():
            return model.sample(values, n, plan, noise=noise,
                                generator=torch.Generator().manual_seed(seed + k)).float()

    images = draw(0)
    if out is not None:
        save_grid(images, out / "eval_grid.png", nrow=8)
    report: dict[str, Any] = {"samples": n, "data": cfg.data.name, "precision": mixed.name}
    names = model.conditioner.encoders
    report.update(shape_scores(names, batch, images))
    if not {"lowres", "inpaint"} & set(names):
        return report
    target = batch["image"]
    report.update(pixel_scores(names, values, target, images))
    report.update(baseline_scores(names, values, target))
    if average > 1:
        mean = torch.stack([images, *(draw(k) for k in range(1, average))]).mean(0)
        report["averaged_samples"] = average
        # the known region of a mean of pasted-back samples is the input up to float rounding:
        # its exactness is a property of single samples, reported above
        report.update({f"{k}_mean_of_samples": v for k, v in pixel_scores(names, values, target, mean).items()
                       if k != "inpaint_known_max_abs_error"})
    return report


def pixel_scores(plugins: Any, values: dict[str, Any], target: torch.Tensor,
                 images: torch.Tensor) -> dict[str, float]:
    """The pixel metrics of ``lowres`` and ``inpaint`` (those enabled) on ``images``."""
    scores: dict[str, float] = {}
    if "lowres" in plugins:
        scores.update(lowres_psnr=float(psnr(images, target).mean()),
                      lowres_ssim=float(ssim(images, target).mean()))
    if "inpaint" in plugins:
        image, hole = values["inpaint"]
        scores.update(inpaint_hole_psnr=hole_psnr(images, image, hole),
                      inpaint_known_max_abs_error=float((images - image).abs()[hole.expand_as(image) <= 0.5].max()))
    return scores


def baseline_scores(plugins: Any, values: dict[str, Any], target: torch.Tensor) -> dict[str, float]:
    """What the pixel metrics read without a model: bicubic upsampling of the low-res input, and
    a blur fill of the hole."""
    scores: dict[str, float] = {}
    if "lowres" in plugins:
        bicubic = F.interpolate(values["lowres"], size=target.shape[-2:], mode="bicubic",
                                align_corners=False).clamp(-1, 1)
        scores.update(bicubic_psnr=float(psnr(bicubic, target).mean()),
                      bicubic_ssim=float(ssim(bicubic, target).mean()))
    if "inpaint" in plugins:
        image, hole = values["inpaint"]
        scores.update(blur_fill_hole_psnr=hole_psnr(blur_fill(image, hole, CONVERGED_SWEEPS), image, hole))
    return scores


def hole_psnr(x: torch.Tensor, image: torch.Tensor, hole: torch.Tensor) -> float:
    """PSNR of ``x`` against ``image`` over the hole's pixels only (images in [-1, 1])."""
    mse = ((x - image) ** 2)[hole.expand_as(image) > 0.5].mean()
    return float(10 * torch.log10(4 / mse.clamp_min(1e-12)))

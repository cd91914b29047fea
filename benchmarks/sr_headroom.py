"""How far above bicubic can any estimator of photos_sr4x's crops get? Model-free upper readings.

PSNR rewards the posterior mean E[x | low-res], so the question behind the experiment's target
(bicubic + 1 dB) is how much of the detail that 4x area downsampling removes is predictable from
what is left. This script fits estimators of the residual ``crop - P(bicubic)`` (``P``: the
consistency projection of ``conditions.lowres.consistent``) on the experiment's training crops
and scores them on its held-out crops, beside bicubic and the projected bicubic:

* the least-squares linear filter from each low-res pixel's k x k neighbourhood (all channels) to
  its 4x4 residual block (the best linear upsampler on top of the projection);
* a k-nearest-neighbour regression: each held-out low-res patch (contrast-normalised) takes the
  mean residual of its K nearest training patches, a nonparametric estimate of E[residual | patch];
* with ``--run``, a trained photos_sr4x model's own estimate of the mean: its denoised output from
  pure noise at the schedule's largest sigma (the x0 that the first sampling step reads), through
  the plugins' ``finish`` as a sample would be.

    python -m benchmarks.sr_headroom [--train 20000] [--held 256] [--run runs/bench/photos_sr4x]

Results: ``benchmarks/results/sr_headroom/<variant>.json`` and ``.md`` (variant ``full`` unless
named; a run to read is made by ``python -m benchmarks.plugins photos_sr4x``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.support.headroom import model_mean, write_table  # noqa: E402

FACTOR = 4


def upsampled(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Low-res input, its bicubic upsampling, and that projected onto the consistent images."""
    from ldm_lowres.encoder import consistent

    low = F.avg_pool2d(images, FACTOR)
    bicubic = F.interpolate(low, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
    return low, bicubic, consistent(bicubic, low)


def patches(low: torch.Tensor, k: int) -> torch.Tensor:
    """(B * h * w, C * k * k): every low-res pixel's neighbourhood, edges replicated."""
    padded = F.pad(low, (k // 2,) * 4, mode="replicate")
    return F.unfold(padded, k).transpose(1, 2).reshape(-1, low.shape[1] * k * k)


def blocks(residual: torch.Tensor) -> torch.Tensor:
    """(B * h * w, C * 16): the 4x4 residual block under each low-res pixel."""
    c = residual.shape[1]
    return F.unfold(residual, FACTOR, stride=FACTOR).transpose(1, 2).reshape(-1, c * FACTOR * FACTOR)


def unblocks(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    b, _, h, w = like.shape
    cols = rows.reshape(b, (h // FACTOR) * (w // FACTOR), -1).transpose(1, 2)
    return F.fold(cols, (h, w), FACTOR, stride=FACTOR)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(4 / mse.clamp_min(1e-12))).mean())


def linear_filter(train: torch.Tensor, held: torch.Tensor, k: int) -> torch.Tensor:
    low, _, proj = upsampled(train)
    x = torch.cat([patches(low, k), torch.ones(low.numel() // low.shape[1], 1)], 1).double()
    weights = torch.linalg.lstsq(x, blocks(train - proj).double()).solution.float()
    low_h, _, proj_h = upsampled(held)
    xh = torch.cat([patches(low_h, k), torch.ones(low_h.numel() // low_h.shape[1], 1)], 1)
    return (proj_h + unblocks(xh @ weights, held)).clamp(-1, 1)


def nearest_neighbours(train: torch.Tensor, held: torch.Tensor, k: int, neighbours: int) -> torch.Tensor:
    def normalised(low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = patches(low, k)
        scale = p.std(1, keepdim=True).clamp_min(0.02)
        return (p - p.mean(1, keepdim=True)) / scale, scale

    low, _, proj = upsampled(train)
    keys, scale = normalised(low)
    answers = blocks(train - proj) / scale
    low_h, _, proj_h = upsampled(held)
    queries, scale_h = normalised(low_h)
    rows = [answers[torch.cdist(q, keys).topk(neighbours, largest=False).indices].mean(1)
            for q in queries.split(512)]  # 512 x keys distances: 2.6 GB at 20,000 crops
    return (proj_h + unblocks(torch.cat(rows) * scale_h, held)).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20000, help="training crops (the experiment's num_items)")
    parser.add_argument("--held", type=int, default=256, help="held-out crops")
    parser.add_argument("--run", type=Path, default=None, help="a trained photos_sr4x run to read too")
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    from ldmcore.config import load
    from ldmcore.build import build_dataset
    from ldmcore.data.datasets import collate
    from ldmcore.eval.tasks import held_out_batch

    cfg = load(["experiment=photos_sr4x"])
    d = cfg.data
    dataset = build_dataset(d.name, **{**d.dataset_kwargs(), "num_items": args.train, "hflip": False})
    train = collate([dataset[i] for i in range(args.train)])["image"]
    held = held_out_batch(cfg, args.held)["image"]
    _, bicubic, projected = upsampled(held)
    rows = {"bicubic": psnr(bicubic, held), "bicubic, projected (consistent)": psnr(projected, held)}
    for k in (3, 5):
        rows[f"projected + least-squares {k}x{k} linear filter"] = psnr(linear_filter(train, held, k), held)
    for k, n in ((3, 16), (3, 64), (5, 32)):
        rows[f"projected + {n}-nearest-neighbour {k}x{k} patch regression"] = psnr(
            nearest_neighbours(train, held, k, n), held)
    if args.run is not None:
        rows[f"model's mean estimate (x0 at the largest sigma), {args.run.name}"] = psnr(
            model_mean(args.run, {"lowres": F.avg_pool2d(held, FACTOR)}, args.held), held)
    write_table("sr_headroom", args.variant, f"photos_sr4x crops: estimators fitted on {args.train} training crops, "
                f"PSNR on {args.held} held-out crops (`python -m benchmarks.sr_headroom"
                f"{'' if args.run is None else f' --run {args.run}'}`).", "estimator", rows, "bicubic",
                train_crops=args.train, held_out_crops=args.held)

if __name__ == "__main__":
    main()

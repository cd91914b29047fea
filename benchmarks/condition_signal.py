"""What a condition tells a trained denoiser, and where its tokens could act.

Two readings on the held-out items ``ldm eval`` samples from, in float32, the noise and
timesteps fixed by seeds:

* **loss gain** per timestep band: the denoising loss with every condition, and with each
  condition in turn replaced by its null. A condition the model uses lowers the loss; one it
  ignores (an attached plugin that has not learned yet) leaves it equal to the last digit.
* **position read-out** per transformer block: how much of each visual token's place (x, y on
  its feature map) a least-squares linear map recovers from the features where inserted layers
  read them (after self-attention), fitted on half the items and scored (R^2) on the other half.
  Grounding tokens (GLIGEN's gated attention) can only steer features that say where they lie.

    python -m benchmarks.condition_signal --run runs/shapes_text_gated [--variant NAME] [--n 256]

Results: ``benchmarks/results/condition_signal/<variant>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.support.results import machine, markdown_table, write_result

BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))  # timesteps, of the usual 1000
PROBE_TIMESTEPS = (100, 500, 900)


def loss_gain(model, values: dict, latents: torch.Tensor) -> list[dict]:
    """Per band: the loss with all conditions and with each one nulled (same noise, same t)."""
    n, names = len(latents), list(model.conditioner.encoders)
    rows = []
    for lo, hi in BANDS:
        g = torch.Generator().manual_seed(lo)
        t = torch.randint(lo, min(hi, model.schedule.num_timesteps), (n,), generator=g)
        noise = torch.randn(latents.shape, generator=g)
        zt = model.schedule.add_noise(latents, noise, t)
        target = model.schedule.target(model.prediction, latents, noise, t).float()
        row = {"band": f"{lo}-{hi}"}
        for dropped in (None, *names):
            keep = None if dropped is None else set(names) - {dropped}
            out = model.network(zt, t, model.conditioner(values, n, keep=keep))
            row["all" if dropped is None else f"without {dropped}"] = float((out.float() - target).pow(2).mean())
        rows.append(row)
    return rows


def position_readout(model, values: dict, latents: torch.Tensor) -> list[dict]:
    """Per probe timestep and transformer block: R^2 of x and y read linearly from the
    features after self-attention (fit on the first half of the items, scored on the rest)."""
    from ldmcore.nn.attention import BasicTransformerBlock

    features: dict[int, torch.Tensor] = {}
    blocks = [m for m in model.unet.modules() if isinstance(m, BasicTransformerBlock)]
    hooks = [b.norm2.register_forward_pre_hook(
        lambda _, args, i=b.index: features.__setitem__(i, args[0].detach().float())) for b in blocks]
    n, rows = len(latents), []
    try:
        for t0 in PROBE_TIMESTEPS:
            t = torch.full((n,), t0)
            zt = model.schedule.add_noise(latents, torch.randn(latents.shape, generator=torch.Generator().manual_seed(t0)), t)
            model.network(zt, t, model.conditioner(values, n))
            for index in sorted(features):
                rows.append({"t": t0, "block": index, **_readout(features[index], model.latent_size)})
    finally:
        for h in hooks:
            h.remove()
    return rows


def _readout(f: torch.Tensor, latent_size: tuple[int, int]) -> dict:
    b, length, d = f.shape
    scale = int(round((latent_size[0] * latent_size[1] / length) ** 0.5))
    h, w = latent_size[0] // scale, latent_size[1] // scale
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    place = torch.stack([xs.flatten() / max(w - 1, 1), ys.flatten() / max(h - 1, 1)], -1).float()
    design = torch.cat([f.reshape(b * length, d), torch.ones(b * length, 1)], 1)
    target = place.repeat(b, 1)
    half = (b // 2) * length
    weights = torch.linalg.lstsq(design[:half], target[:half], driver="gelsd").solution
    err = (design[half:] @ weights - target[half:]).pow(2).mean(0)
    r2 = 1 - err / target[half:].var(0)
    return {"map": f"{h}x{w}", "r2_x": float(r2[0]), "r2_y": float(r2[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--n", type=int, default=256, help="held-out items")
    parser.add_argument("--variant", default=None, help="results name (default: the run folder's)")
    args = parser.parse_args()
    from ldmcore.eval.tasks import held_out_batch
    from ldmcore.runfolder import load_run

    torch.set_grad_enabled(False)
    cfg, model, _ = load_run(args.run)
    model.float()
    batch = held_out_batch(cfg, args.n)
    values = model.conditioner.resolve(batch, generator=torch.Generator().manual_seed(0))
    latents = model.diffusion_space(values).into(model.encode_images(batch["image"], torch.Generator().manual_seed(0)))
    gains = loss_gain(model, values, latents)
    readout = position_readout(model, values, latents)
    variant = args.variant or args.run.name
    columns = list(gains[0])
    md = [f"# What the conditions tell `{args.run}`", "", f"{machine()}; n={args.n} held-out items, float32.",
          "", "Denoising loss (the run's prediction target) per timestep band, with each condition nulled in turn:", "",
          markdown_table(columns, [[r[c] if c == "band" else f"{r[c]:.4f}" for c in columns] for r in gains]),
          "", "Linear read-out (R^2, held-out half) of each visual token's x and y from the features after self-attention:", "",
          markdown_table(["t", "block", "map", "R^2 x", "R^2 y"],
                         [[r["t"], r["block"], r["map"], f"{r['r2_x']:.2f}", f"{r['r2_y']:.2f}"] for r in readout]),
          "", f"Command: `python -m benchmarks.condition_signal --run {args.run} --n {args.n}`"]
    write_result("condition_signal", variant, {"run": str(args.run), "n": args.n, "machine": machine(),
                                               "loss_gain": gains, "position_readout": readout}, "\n".join(md))


if __name__ == "__main__":
    main()

"""Attach a new plugin to a trained backbone and fine-tune only the plugin.

Starting from a trained shapes run (default: ``runs/bench/shapes_layout``, boxes and kinds but
no colours), a new plugin (default ``lowres``: the 8x8 image as concat channels plus its noise
level as a vector, so both zero-initialised attachment paths are exercised) is attached with
``model.init_from=BASE`` and trained with ``trainer.train_only=[plugins]``: the plugin and the
backbone slices it adds are the only trained weights. The plugin's ``ldm eval`` metric is
measured at step 0, where the attachment changes no output, and after fine-tuning; then every
backbone tensor of the fine-tuned checkpoint (UNet, its EMA, the autoencoder; for the widened
input convolution, the pretrained channels) is compared byte for byte with the base run's.

    python -m benchmarks.attach_plugin [--base runs/bench/shapes_layout] [--plugin lowres] [--steps 400]

Results: ``benchmarks/results/attach_plugin/<variant>.json`` and ``.md`` (variant ``full``
unless named; the base run is made by ``python -m benchmarks.plugins shapes_layout``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.support.results import machine, markdown_table, write_result
from benchmarks.support.runs import load_trained_run
from benchmarks.support.timing import timed_command

IN_CONV = "unet.input_blocks.0.0.weight"


METRIC = {"lowres": "lowres_psnr", "segmap": "segmap_miou", "layout": "layout_mean_iou",
          "inpaint": "inpaint_hole_psnr"}


def plugin_metric(run: Path, plugin: str) -> dict:
    timed_command(["eval", f"run={run}", "n=64"])
    return json.loads((run / "eval.json").read_text())


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().flatten().view(torch.uint8)


def backbone_identical(base: Path, tuned: Path) -> dict:
    """Compare every backbone tensor of ``tuned`` with the pretrained one byte for byte.

    ``model.init_from`` starts from the base run's EMA weights (what it samples with), so the
    reference for ``unet.X`` is the base's ``ema.unet.X`` where the base keeps one. The tuned
    run's raw tensors and, where it keeps them, its EMA copies are both compared.
    """
    from ldmcore import checkpoint

    old, _ = checkpoint.load(base / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(tuned / "checkpoints" / "last.safetensors")
    compared, differing = 0, []
    for key, value in old.items():
        if not key.startswith(("unet.", "autoencoder.")):
            continue
        reference = old.get(f"ema.{key}", value)
        for stored in (key, f"ema.{key}"):
            if stored not in new:  # train_only keeps EMA copies of trained tensors only
                continue
            other = new[stored]
            if key == IN_CONV:  # widened: the pretrained input channels come first
                other = other[:, :reference.shape[1]]
            compared += 1
            if other.shape != reference.shape or not torch.equal(_bytes(other), _bytes(reference)):
                differing.append(stored)
    return {"tensors_compared": compared, "tensors_differing": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("runs/bench/shapes_layout"))
    parser.add_argument("--plugin", default="lowres", choices=sorted(METRIC))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides")
    parser.add_argument("--reuse", action="store_true", help="score runs already trained under --root")
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    args = parser.parse_args()
    cfg, _, _ = load_trained_run(args.base, "python -m benchmarks.plugins shapes_layout")
    plugins = [*cfg.conditions, args.plugin]
    key = METRIC[args.plugin]
    common = [f"experiment={cfg.name}", f"condition=[{','.join(plugins)}]",
              f"model.init_from={args.base}", "trainer.train_only=[plugins]",
              "trainer.weight_decay=0", "trainer.progress=false", "overwrite=true", *args.set]
    at_zero, tuned = args.root / "attach_step0", args.root / f"attach_{args.plugin}"
    if args.reuse:
        before, after = (json.loads((r / "eval.json").read_text()) for r in (at_zero, tuned))
        timing = json.loads((tuned / "train_time.json").read_text())
    else:
        timed_command(["train", f"run_dir={at_zero}", "trainer.max_steps=0", *common])
        before = plugin_metric(at_zero, args.plugin)
        timing = timed_command(["train", f"run_dir={tuned}", f"trainer.max_steps={args.steps}", *common])
        (tuned / "train_time.json").write_text(json.dumps(timing))
        after = plugin_metric(tuned, args.plugin)
    check = backbone_identical(args.base, tuned)
    store = {"machine": machine(), "base": str(args.base), "plugin": args.plugin, "steps": args.steps,
             "metric": key, "eval_step0": before, "eval_after": after, "train": timing, **check,
             "command": " ".join(["ldm train", f"run_dir={tuned}", f"trainer.max_steps={args.steps}", *common])}
    rows = [[k, f"{before[k]:.3f}", f"{after[k]:.3f}"] for k in after
            if isinstance(after[k], float) and k in before]
    table = markdown_table(["eval.json", "step 0 (attached, no output change)",
                            "after fine-tuning the plugin only"], rows)
    md = (f"Base `{args.base}` ({', '.join(cfg.conditions)}); `{args.plugin}` attached and trained "
          f"alone for {args.steps} steps ({timing['wall_s']:.0f} s); its metric is `{key}`.\n\n"
          f"{table}\n\n"
          f"Backbone tensors compared byte for byte: {check['tensors_compared']}, differing: "
          f"{len(check['tensors_differing'])} ({', '.join(check['tensors_differing'][:4]) or 'none'}).\n")
    write_result("attach_plugin", args.variant, store, md)


if __name__ == "__main__":
    main()

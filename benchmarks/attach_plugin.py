"""Attach a new plugin to a trained backbone and fine-tune only the plugin (issue 5).

Starting from a trained shapes run (default: ``runs/bench/shapes_text``), the ``segmap`` plugin
(a concat condition) is attached with ``model.init_from=BASE`` and trained with
``trainer.train_only=[plugins]``: its rescaler and the zero-initialised input-convolution
channels it adds are the only trained weights. The segmap metric (mIoU of the requested map
with the generated image's segmentation, ``ldm eval``) is measured at step 0, where the
attachment changes no output, and after fine-tuning; then every backbone tensor of the
fine-tuned checkpoint (UNet, its EMA, the autoencoder; for the widened input convolution, the
pretrained channels) is compared byte for byte with the base run's.

    python benchmarks/attach_plugin.py [--base runs/bench/shapes_text] [--steps 1000]

Results: ``benchmarks/results/attach_plugin.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import RESULTS, machine, timed_command  # noqa: E402

import torch  # noqa: E402

IN_CONV = "unet.input_blocks.0.0.weight"


def segmap_miou(run: Path) -> float:
    timed_command(["eval", f"run={run}", "n=64"])
    return json.loads((run / "eval.json").read_text())["segmap_miou"]


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().flatten().view(torch.uint8)


def backbone_identical(base: Path, tuned: Path) -> dict:
    """Compare every backbone tensor of ``base`` with ``tuned`` byte for byte."""
    from ldmcore import checkpoint

    old, _ = checkpoint.load(base / "checkpoints" / "last.safetensors")
    new, _ = checkpoint.load(tuned / "checkpoints" / "last.safetensors")
    compared, differing = 0, []
    for key, value in old.items():
        if not key.startswith(("unet.", "ema.unet.", "autoencoder.")):
            continue
        other = new[key]
        if key.endswith(IN_CONV):  # widened: the pretrained input channels come first
            other = other[:, :value.shape[1]]
        compared += 1
        if other.shape != value.shape or not torch.equal(_bytes(other), _bytes(value)):
            differing.append(key)
    return {"tensors_compared": compared, "tensors_differing": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("runs/bench/shapes_text"))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--root", type=Path, default=Path("runs/bench"))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides")
    args = parser.parse_args()
    from ldmcore.sample import load_run

    cfg, _, _ = load_run(args.base)
    plugins = [*cfg.conditions, "segmap"]
    common = [f"experiment={cfg.name}", f"condition=[{','.join(plugins)}]",
              f"model.init_from={args.base}", "trainer.train_only=[plugins]",
              "trainer.weight_decay=0", "trainer.progress=false", "overwrite=true", *args.set]
    at_zero = args.root / "attach_step0"
    timed_command(["train", f"run_dir={at_zero}", "trainer.max_steps=0", *common])
    before = segmap_miou(at_zero)
    tuned = args.root / "attach_segmap"
    timing = timed_command(["train", f"run_dir={tuned}", f"trainer.max_steps={args.steps}", *common])
    after = segmap_miou(tuned)
    check = backbone_identical(args.base, tuned)
    store = {"machine": machine(), "base": str(args.base), "plugin": "segmap", "steps": args.steps,
             "segmap_miou_step0": before, "segmap_miou_after": after, "train": timing, **check,
             "command": " ".join(["ldm train", f"run_dir={tuned}", f"trainer.max_steps={args.steps}", *common])}
    out = RESULTS / "attach_plugin.json"
    out.write_text(json.dumps(store, indent=1))
    md = (f"Base `{args.base}` ({', '.join(cfg.conditions)}); `segmap` attached and trained alone "
          f"for {args.steps} steps ({timing['wall_s']:.0f} s).\n\n"
          f"| | segmap mIoU |\n|---|---|\n| step 0 (attached, no output change) | {before:.3f} |\n"
          f"| after fine-tuning the plugin only | {after:.3f} |\n\n"
          f"Backbone tensors compared byte for byte: {check['tensors_compared']}, differing: "
          f"{len(check['tensors_differing'])}.\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

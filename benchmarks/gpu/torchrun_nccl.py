"""Prepared for a CUDA machine: the data-parallel parity test of tests/test_distributed.py on NCCL.

Not run by CI (which has no GPU). On a machine with CUDA::

    python -m benchmarks.gpu.torchrun_nccl [--out runs/nccl_parity]

It trains the ``smoke`` experiment for 4 steps, global batch 16, float32:

1. the reference: one plain process on ``cuda:0`` (no process group);
2. ``torchrun --nproc-per-node 1`` with ``trainer.strategy=ddp`` and ``=fsdp``: a one-rank NCCL
   process group (torchrun always joins one), so DDP's and FSDP2's NCCL paths run on one GPU;
3. with two or more GPUs, also ``--nproc-per-node 2`` (per-process batch 8) for both strategies;
4. an FSDP run stopped at step 2 and resumed by one plain process, to step 4.

Each run's ``last.safetensors`` (weights, EMA, AdamW moments) must equal the reference within
the CPU test's tolerance (rtol 1e-4, atol 1e-5). TF32 is off (``NVIDIA_TF32_OVERRIDE=0``), so
differences come from reduction order and non-deterministic kernels only. The report
goes to stdout and ``OUT/report.json``; the exit status is 1 when any comparison fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from ldmcore import checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1",
       "NVIDIA_TF32_OVERRIDE": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
COMMON = ["experiment=smoke", "trainer.precision=fp32", "trainer.max_steps=4",
          "trainer.checkpoint_every=2", "sampler.steps=2"]


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def train(prefix: list[str], run: Path, ae: Path, batch: int, *extra: str) -> None:
    cmd = [*prefix, "-m", "ldmcore.cli", "train", *COMMON, f"run_dir={run}",
           f"autoencoder.checkpoint={ae}", f"trainer.batch_size={batch}", *extra]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def max_error(run: Path, reference: Path) -> dict[str, float | bool]:
    a, _ = checkpoint.load(reference / "checkpoints" / "last.safetensors")
    b, meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("unet.", "ema.", "conditioner.", "optim."))]
    ok, worst = set(a) == set(b) and meta["step"] == 4, 0.0
    for k in keys:
        if a[k].shape != b[k].shape:
            ok = False
            continue
        worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
        ok = ok and torch.allclose(b[k].double(), a[k].double(), rtol=1e-4, atol=1e-5)
    return {"max_abs_error": worst, "within_tolerance": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/nccl_parity"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks NCCL; the CPU/gloo version is "
              "tests/test_distributed.py", file=sys.stderr)
        return 2
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    gpus = torch.cuda.device_count()
    train([sys.executable], out / "ae", Path("unused"), 16, "autoencoder.checkpoint=null",
          "trainer.max_steps=0")
    ae = out / "ae" / "checkpoints" / "autoencoder.safetensors"
    train([sys.executable], out / "single", ae, 16)
    report: dict[str, dict[str, float | bool]] = {}
    for n in [1, 2] if gpus >= 2 else [1]:
        for strategy in ("ddp", "fsdp"):
            name = f"nccl_{n}x_{strategy}"
            train(torchrun(n), out / name, ae, 16 // n, f"trainer.strategy={strategy}")
            report[name] = max_error(out / name, out / "single")
    n = min(gpus, 2)
    resumed = out / f"nccl_{n}x_fsdp_then_single"
    train(torchrun(n), resumed, ae, 16 // n, "trainer.strategy=fsdp", "trainer.max_steps=2")
    train([sys.executable], resumed, ae, 16, "resume=true")
    report[resumed.name] = max_error(resumed, out / "single")
    record = {"device": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
              "runs": report}
    (out / "report.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0 if all(r["within_tolerance"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

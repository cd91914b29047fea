"""Prepared for a CUDA machine: ldmcore against diffusers on the same weights, on one GPU.

The CPU benchmark (``benchmarks.perf``) measured on the GPU: the same anchor (a 35.6M-parameter
SD-1.x-layout UNet and a half-width SD VAE, built by diffusers with seeded weights and imported
through the interop key maps), the same tasks, each library's natural GPU settings:

* fp32: TF32 off for matmuls and convolutions in both libraries (so fp32 means fp32);
* bf16 / fp16: diffusers with its weights cast (``unet.to(dtype)``, what ``torch_dtype=`` does)
  and under autocast, the faster taken; ldmcore with ``execution.bf16_weights``-style casting
  (norms kept float32), NCHW and channels_last, the faster taken.

Scaled-dot-product attention picks its fused CUDA kernel (flash / memory-efficient) in both.
Timing alternates the variants call by call after warm-up (cuDNN autotuning on), each call
bracketed by ``torch.cuda.synchronize()``; medians over ``--reps`` rounds. Peak memory is
``torch.cuda.max_memory_allocated`` of one call. A variant that raises is recorded with its
error instead of stopping the run. Writes ``OUT/cuda_perf.json`` and ``OUT/cuda_perf.md``
(``run_device.sh`` runs it; its recorded results go in ``benchmarks/results/cuda_perf/``,
named after the GPU)::

    python -m benchmarks.gpu.cuda_perf --out runs/cuda_perf [--reps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.support import anchor, timing
from ldmcore.nn.execution import cast_weights, to_channels_last

CL = torch.channels_last
DEV = torch.device("cuda")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def sync_call(fn, ctx=None):
    def run():
        with (ctx or nothing)():
            out = fn()
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def alternate(variants: dict, reps: int, warmup: int = 3) -> dict:
    """Median seconds per variant (name -> (context, call)), round-robin (``timing.alternate``);
    a variant that fails its first call is recorded with its error instead of timed."""
    calls, errors = {}, {}
    for name, (ctx, fn) in variants.items():
        try:
            sync_call(fn, ctx)()
            calls[name] = sync_call(fn, ctx)
        except Exception as exc:  # a variant this torch/GPU cannot run is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    seconds = timing.alternate(calls, reps, warmup=warmup - 1)
    return {"seconds": {n: round(v, 5) for n, v in seconds.items()}, "errors": errors}


def peak_mib(ctx, fn) -> float | None:
    if DEV.type != "cuda":
        return None
    try:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sync_call(fn, ctx)()
        return round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
    except Exception:
        return None


def compare(variants: dict, reps: int, reference: str = "diffusers fp32") -> dict:
    """Time all variants; each output's max abs difference from the fp32 diffusers output."""
    result = alternate(variants, reps)
    ref = None
    diffs = {}
    for name, (ctx, fn) in variants.items():
        if name in result["errors"]:
            continue
        with ctx():
            out = fn().float()
        if name == reference:
            ref = out
        diffs[name] = out
    if ref is not None:
        scale = float(ref.abs().max())
        result["relative_diff_vs_fp32"] = {n: round(float((o - ref).abs().max()) / scale, 5)
                                           for n, o in diffs.items() if n != reference}
    result["peak_mib"] = {n: peak_mib(ctx, fn) for n, (ctx, fn) in variants.items()
                          if n not in result["errors"]}
    result["speedup"] = timing.ratios(result["seconds"], ("fp32", "bf16", "fp16"))
    return result


def nothing():
    return contextlib.nullcontext()


def autocast(dtype):
    return lambda: torch.autocast(DEV.type, dtype=dtype)


class Models:
    def __init__(self) -> None:
        a = anchor.build()
        self.d = {"fp32": a.diffusers_unet.to(DEV)}
        self.dv = {"fp32": a.diffusers_vae.to(DEV)}
        self.ours = {"fp32": a.unet.to(DEV), "fp32 cl": to_channels_last(copy.deepcopy(a.unet).to(DEV))}
        self.ours_vae = {"fp32": a.vae.to(DEV)}
        for p, dt in DTYPES.items():
            self.d[p] = copy.deepcopy(a.diffusers_unet).to(DEV, dt)
            self.dv[p] = copy.deepcopy(a.diffusers_vae).to(DEV, dt)
            self.ours[p] = cast_weights(copy.deepcopy(a.unet).to(DEV), dt)
            self.ours[f"{p} cl"] = to_channels_last(cast_weights(copy.deepcopy(a.unet).to(DEV), dt))
            self.ours_vae[p] = cast_weights(copy.deepcopy(a.vae).to(DEV), dt)


def unet_variants(m: Models, batch: int) -> dict:
    x, t, ctx = (v.to(DEV) for v in anchor.inputs(batch))
    xcl = x.contiguous(memory_format=CL)
    out = {"diffusers fp32": (nothing, lambda: m.d["fp32"](x, t, encoder_hidden_states=ctx).sample),
           "ldmcore fp32": (nothing, lambda: m.ours["fp32"](x, t, ctx)),
           "ldmcore fp32 cl": (nothing, lambda: m.ours["fp32 cl"](xcl, t, ctx))}
    for p, dt in DTYPES.items():
        xd, cd = x.to(dt), ctx.to(dt)
        out[f"diffusers {p} weights"] = (nothing, lambda xd=xd, cd=cd, p=p: m.d[p](
            xd, t, encoder_hidden_states=cd).sample)
        out[f"diffusers {p} autocast"] = (autocast(dt), lambda: m.d["fp32"](
            x, t, encoder_hidden_states=ctx).sample)
        out[f"ldmcore {p}"] = (nothing, lambda p=p: m.ours[p](x, t, ctx))
        out[f"ldmcore {p} cl"] = (nothing, lambda p=p: m.ours[f"{p} cl"](xcl, t, ctx))
    return out


@torch.inference_mode()
def unet_forward(m: Models, batch: int, reps: int) -> dict:
    return {"batch": batch, **compare(unet_variants(m, batch), reps)}


@torch.inference_mode()
def sample(m: Models, batch: int, reps: int) -> dict:
    """The sampling anchor (``anchor.sampling_inputs``): 20-step DPM-Solver++(2M), guidance 5."""
    run = anchor.sampling_inputs(batch, DEV)
    variants = {"diffusers fp32": (nothing, lambda: anchor.diffusers_sample(m.d["fp32"], run)),
                "ldmcore fp32": (nothing, lambda: anchor.ldmcore_sample(m.ours["fp32"], run))}
    for p in DTYPES:
        variants[f"diffusers {p} weights"] = (nothing, lambda p=p: anchor.diffusers_sample(m.d[p], run))
        variants[f"ldmcore {p}"] = (nothing, lambda p=p: anchor.ldmcore_sample(m.ours[p], run))
        variants[f"ldmcore {p} cl"] = (nothing, lambda p=p: anchor.ldmcore_sample(m.ours[f"{p} cl"], run))
    return {"batch": batch, "steps": anchor.STEPS, **compare(variants, reps)}


@torch.inference_mode()
def vae_decode(m: Models, batch: int, reps: int) -> dict:
    z = torch.randn(batch, 4, anchor.LATENT, anchor.LATENT,
                    generator=torch.Generator().manual_seed(2)).to(DEV)
    variants = {"diffusers fp32": (nothing, lambda: m.dv["fp32"].decode(z).sample),
                "ldmcore fp32": (nothing, lambda: m.ours_vae["fp32"].decode(z))}
    for p, dt in DTYPES.items():
        variants[f"diffusers {p} weights"] = (nothing, lambda p=p, dt=dt: m.dv[p].decode(z.to(dt)).sample)
        variants[f"ldmcore {p}"] = (nothing, lambda p=p: m.ours_vae[p].decode(z))
    return {"batch": batch, **compare(variants, reps)}


def train_step(m: Models, batch: int, reps: int) -> dict:
    """Forward + MSE + backward + AdamW (lr 0: outputs stay comparable), float32 master weights."""
    x, t, ctx = (v.to(DEV) for v in anchor.inputs(batch, seed=3))
    noise = torch.randn_like(x)
    xcl = x.contiguous(memory_format=CL)
    nets = {"diffusers": copy.deepcopy(m.d["fp32"]).train(),
            "ldmcore": copy.deepcopy(m.ours["fp32"]).train(),
            "ldmcore cl": copy.deepcopy(m.ours["fp32 cl"]).train()}
    opts = {k: torch.optim.AdamW(v.parameters(), lr=0.0, fused=DEV.type == "cuda") for k, v in nets.items()}

    def step(key: str, dtype):
        net, opt = nets[key], opts[key]
        ctxm = autocast(dtype) if dtype is not None else nothing

        def run():
            with ctxm():
                pred = (net(xcl if key.endswith("cl") else x, t, ctx) if key.startswith("ldmcore")
                        else net(x, t, encoder_hidden_states=ctx).sample)
            F.mse_loss(pred.float(), noise).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return pred.detach()
        return run

    variants = {"diffusers fp32": (nothing, step("diffusers", None)),
                "ldmcore fp32": (nothing, step("ldmcore", None)),
                "diffusers bf16 autocast": (nothing, step("diffusers", torch.bfloat16)),
                "ldmcore bf16 autocast": (nothing, step("ldmcore", torch.bfloat16)),
                "ldmcore bf16 autocast cl": (nothing, step("ldmcore cl", torch.bfloat16))}
    return {"batch": batch, **compare(variants, reps)}


@torch.inference_mode()
def flops(m: Models) -> dict:
    """UNet forward FLOPs at batch 8 (counter, which sees the CUDA attention kernels) and the
    bf16 matmul peak measured here, for the achieved fraction."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, ctx = (v.to(DEV) for v in anchor.inputs(8))
    counter = FlopCounterMode(display=False)
    with counter:
        m.ours["bf16"](x, t, ctx)
    n = 8192 if DEV.type == "cuda" else 1024
    a = torch.randn(n, n, device=DEV, dtype=torch.bfloat16)
    s = alternate({"mm": (nothing, lambda: a @ a)}, 10)["seconds"]["mm"]
    return {"unet_b8_gflop": round(counter.get_total_flops() / 1e9, 2),
            "bf16_matmul_tflops": round(2 * n ** 3 / s / 1e12, 1)}


def markdown(res: dict) -> str:
    lines = [f"# ldmcore vs diffusers on {res['device']} (torch {res['torch']})", "",
             "Median seconds per call; speedup = diffusers' best / ldmcore's best per precision.", ""]
    for task, r in res["tasks"].items():
        if "seconds" not in r:
            lines += [f"## {task}", "", f"failed: {r.get('error')}", ""]
            continue
        lines += [f"## {task} (batch {r.get('batch')})", "", "| variant | s | rel. diff vs fp32 | peak MiB |",
                  "|---|---|---|---|"]
        for n, s in r["seconds"].items():
            lines.append(f"| {n} | {s:.5f} | {r.get('relative_diff_vs_fp32', {}).get(n, '')} | "
                         f"{r['peak_mib'].get(n)} |")
        lines += ["", f"speedup: {r['speedup']}"]
        if r["errors"]:
            lines += ["", f"errors: {r['errors']}"]
        lines.append("")
    if "flops" in res:
        lines += [f"FLOPs: {res['flops']}", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/cuda_perf"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: dry run of the script
    args = ap.parse_args()
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the CPU benchmark is `python -m benchmarks.perf`", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    m = Models()
    name = torch.cuda.get_device_name(0) if DEV.type == "cuda" else "cpu (dry run)"
    res = {"device": name, "torch": torch.__version__, "tasks": {}}
    mid, big = (8, 64) if DEV.type == "cuda" else (2, 2)
    jobs = {"unet_b1": lambda: unet_forward(m, 1, args.reps),
            f"unet_b{mid}": lambda: unet_forward(m, mid, args.reps),
            f"unet_b{big}": lambda: unet_forward(m, big, args.reps),
            f"sample_b{mid}": lambda: sample(m, mid, max(1, args.reps // 3)),
            f"vae_decode_b{mid}": lambda: vae_decode(m, mid, args.reps),
            f"train_step_b{mid}": lambda: train_step(m, mid, args.reps),
            f"train_step_b{big}": lambda: train_step(m, big, args.reps)}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, job in jobs.items():
        t0 = time.perf_counter()
        try:
            res["tasks"][name] = job()
        except Exception as exc:
            res["tasks"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500],
                                  "trace": traceback.format_exc()[-2000:]}
        res["tasks"][name]["task_seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(res["tasks"][name].get("speedup", res["tasks"][name].get("error"))),
              flush=True)
        (args.out / "cuda_perf.json").write_text(json.dumps(res, indent=1))
    try:
        res["flops"] = flops(m)
        b8 = res["tasks"][f"unet_b{mid}"]["seconds"]
        best = min(v for k, v in b8.items() if k.startswith("ldmcore bf16"))
        res["flops"]["ldmcore_bf16_b8_of_peak"] = round(
            res["flops"]["unet_b8_gflop"] / best / 1e3 / res["flops"]["bf16_matmul_tflops"], 4)
    except Exception as exc:
        res["flops"] = {"error": str(exc)[:300]}
    (args.out / "cuda_perf.json").write_text(json.dumps(res, indent=1))
    (args.out / "cuda_perf.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

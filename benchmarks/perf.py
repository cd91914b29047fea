"""ldmcore against diffusers on the same weights: UNet forward, 20-step sample, VAE decode, training.

The anchor (``benchmarks.support.anchor``) is a 35.6M-parameter SD-1.x-layout UNet on 32x32x4
latents with 16 context tokens of width 384, built by diffusers and imported into ldmcore.
Every task times the libraries alternating in this one process, ``reps`` rounds, and reports
median seconds and the ratio diffusers / ldmcore (above 1: ldmcore is faster). Variants:

* fp32: both libraries in float32 (ldmcore with channels_last).
* bf16 (by default only where the CPU runs bf16 natively, AMX or AVX-512-BF16: elsewhere it is
  emulated and 7-36x slower than float32, so ``--precisions fp32,bf16`` asks for it explicitly):
  diffusers under bf16 autocast, under autocast with channels_last, and (inference) with
  its weights cast to bf16 and channels_last (``torch_dtype=torch.bfloat16``); the ratio is
  taken against the fastest of them. ldmcore with bf16 weights and channels_last
  for inference, bf16 autocast and channels_last for training (float32 master weights).

Each variant's output is compared with the float32 diffusers output (max abs difference).
FLOP/s of the batch-8 UNet forward (``torch.utils.flop_counter`` for convs and matmuls, plus
attention counted analytically, 4 * B * Lq * Lk * width per attention call, because the counter
does not see the CPU flash kernel) is set against 2048x2048 matmul peaks measured in this run.
Usage::

    python -m benchmarks.perf [--quick] [--threads N] [--reps N] [--only TASK,...]
                              [--precisions fp32,bf16] [--variant NAME]

Writes ``benchmarks/results/perf/<variant>.json`` and ``.md`` (variant ``full``, or ``quick``
with ``--quick``); a run of some tasks (``--only``) updates those tasks in the variant's files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.support import anchor  # noqa: E402
from benchmarks.support.demo_step import demo_batch_size, demo_training_step  # noqa: E402
from benchmarks.support.results import load_average, result_paths, write_result  # noqa: E402
from benchmarks.support.timing import alternate, alternate_clocks, peak_rss_mib, ratios  # noqa: E402
from ldmcore.hardware import choose_precision, machine_line  # noqa: E402
from ldmcore.nn.execution import Compiled, cast_weights, to_channels_last  # noqa: E402
BF16_TOLERANCE = 0.05  # bf16: max abs difference from float32 over the reference's max abs value
TASKS = ("matmul", "unet_b1", "unet_b8", "sample", "vae_decode", "train_step", "demo_step", "flops",
         "memory")

CL = torch.channels_last
# the precisions timed: float32, and bf16 where precision=auto would pick it (set by --precisions)
PRECISIONS = ["fp32", *(["bf16"] if choose_precision("auto").name == "bf16" else [])]


def kept(variant: str) -> bool:
    """Whether a variant (named with its precision) is among the precisions timed."""
    return any(p in variant for p in PRECISIONS)


def autocast(on: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


class Models:
    """The anchor in every execution variant the tasks compare."""

    def __init__(self) -> None:
        a = anchor.build()
        self.d_unet, self.d_vae = a.diffusers_unet, a.diffusers_vae
        self.d_unet_cl = copy.deepcopy(a.diffusers_unet).to(memory_format=CL)
        self.d_vae_cl = copy.deepcopy(a.diffusers_vae).to(memory_format=CL)
        # diffusers' other bf16 path: weights cast once (``torch_dtype=torch.bfloat16``), + NHWC
        self.d_unet16cl = copy.deepcopy(a.diffusers_unet).to(torch.bfloat16, memory_format=CL)
        self.d_vae16cl = copy.deepcopy(a.diffusers_vae).to(torch.bfloat16, memory_format=CL)
        self.unet32 = to_channels_last(a.unet)
        self.unet16 = cast_weights(to_channels_last(copy.deepcopy(a.unet)), torch.bfloat16)
        self.vae32 = to_channels_last(a.vae)
        self.vae16 = cast_weights(to_channels_last(copy.deepcopy(a.vae)), torch.bfloat16)


def unet_variants(m: Models, x, t, ctx) -> dict[str, tuple[bool, callable]]:
    """name -> (bf16, call); diffusers names start with ``diffusers``."""
    xcl = x.contiguous(memory_format=CL)
    return {
        "diffusers fp32": (False, lambda: m.d_unet(x, t, encoder_hidden_states=ctx).sample),
        "ldmcore fp32": (False, lambda: m.unet32(x, t, ctx)),
        "diffusers bf16 autocast": (True, lambda: m.d_unet(x, t, encoder_hidden_states=ctx).sample),
        "diffusers bf16 autocast+cl": (True, lambda: m.d_unet_cl(xcl, t, encoder_hidden_states=ctx).sample),
        "diffusers bf16 weights+cl": (False, lambda: m.d_unet16cl(
            xcl.bfloat16(), t, encoder_hidden_states=ctx.bfloat16()).sample),
        "ldmcore bf16": (False, lambda: m.unet16(x, t, ctx)),
    }


def compare(variants: dict[str, tuple[bool, callable]], reps: int, reference: str = "diffusers fp32"
            ) -> dict:
    """Time every variant alternating; outputs against the reference; ratios per precision."""
    variants = {k: v for k, v in variants.items() if kept(k)}
    outputs = {}
    for name, (ac, fn) in variants.items():
        with autocast(ac):
            outputs[name] = fn()
    wrapped = {name: (lambda ac=ac, fn=fn: _run(ac, fn)) for name, (ac, fn) in variants.items()}
    clocks = alternate_clocks(wrapped, reps)
    seconds = clocks["wall"]
    ref = outputs[reference]
    scale = float(ref.float().abs().max())
    result = {"seconds": {k: round(v, 4) for k, v in seconds.items()},
              "cpu_seconds": {k: round(v, 4) for k, v in clocks["cpu"].items()},
              "max_abs_diff_vs_fp32": {k: err(v, ref) for k, v in outputs.items() if k != reference},
              "relative_diff_vs_fp32": {k: round(err(v, ref) / scale, 5)
                                        for k, v in outputs.items() if k != reference},
              "reference_max_abs": scale}
    result["speedup"] = ratios(seconds)
    result["speedup_cpu_clock"] = ratios(clocks["cpu"])
    return result


def _run(ac: bool, fn) -> None:
    with autocast(ac):
        fn()


@torch.inference_mode()
def unet_forward(m: Models, batch: int, reps: int, compiled: bool = False) -> dict:
    x, t, ctx = anchor.inputs(batch)
    variants = unet_variants(m, x, t, ctx)
    if compiled:  # execution.compile: inductor with freezing, compiled once for this shape
        fast = Compiled(m.unet16)
        t0 = time.perf_counter()
        fast(x, t, ctx)
        compile_s = time.perf_counter() - t0
        variants["ldmcore bf16 compiled"] = (False, lambda: fast(x, t, ctx))
    out = {"batch": batch, **compare(variants, reps)}
    if compiled:
        out["compile_seconds"] = round(compile_s, 1)
        out["compile_failed"] = fast.failed
    return out


@torch.inference_mode()
def sample(m: Models, batch: int, reps: int) -> dict:
    """The sampling anchor (``anchor.sampling_inputs``): 20-step DPM-Solver++(2M), guidance 5."""
    run = anchor.sampling_inputs(batch)
    variants = {
        "diffusers fp32": (False, lambda: anchor.diffusers_sample(m.d_unet, run)),
        "ldmcore fp32": (False, lambda: anchor.ldmcore_sample(m.unet32, run)),
        "diffusers bf16 autocast": (True, lambda: anchor.diffusers_sample(m.d_unet, run)),
        "diffusers bf16 autocast+cl": (True, lambda: anchor.diffusers_sample(m.d_unet_cl, run, channels_last=True)),
        "diffusers bf16 weights+cl": (False, lambda: anchor.diffusers_sample(m.d_unet16cl, run, channels_last=True)),
        "ldmcore bf16": (False, lambda: anchor.ldmcore_sample(m.unet16, run)),
    }
    return {"batch": batch, "steps": anchor.STEPS, "guidance": anchor.GUIDANCE, **compare(variants, reps)}


@torch.inference_mode()
def vae_decode(m: Models, batch: int, reps: int) -> dict:
    z = torch.randn(batch, 4, anchor.LATENT, anchor.LATENT, generator=torch.Generator().manual_seed(2))
    zcl = z.contiguous(memory_format=CL)
    variants = {
        "diffusers fp32": (False, lambda: m.d_vae.decode(z).sample),
        "ldmcore fp32": (False, lambda: m.vae32.decode(z)),
        "diffusers bf16 autocast": (True, lambda: m.d_vae.decode(z).sample),
        "diffusers bf16 autocast+cl": (True, lambda: m.d_vae_cl.decode(zcl).sample),
        "diffusers bf16 weights+cl": (False, lambda: m.d_vae16cl.decode(zcl.bfloat16()).sample),
        "ldmcore bf16": (False, lambda: m.vae16.decode(z)),
    }
    return {"batch": batch, **compare(variants, reps)}


def train_step(m: Models, batch: int, reps: int) -> dict:
    """Forward + MSE on eps + backward + AdamW step, on separate trainable copies."""

    x, t, ctx = anchor.inputs(batch, seed=3)
    noise = torch.randn_like(x)
    nets = {"diffusers": copy.deepcopy(m.d_unet).train(),
            "diffusers cl": copy.deepcopy(m.d_unet_cl).train(),
            "ldmcore": copy.deepcopy(m.unet32).train()}
    # lr 0: AdamW does all its work (moments, update, decay) but the weights stay those of step
    # 0, so every variant's prediction is comparable with the float32 reference
    opts = {k: torch.optim.AdamW(v.parameters(), lr=0.0) for k, v in nets.items()}
    xcl = x.contiguous(memory_format=CL)

    def step(key: str):
        net, opt = nets[key], opts[key]
        call = ((lambda: net(x, t, ctx)) if key == "ldmcore" else
                (lambda: net(xcl if key.endswith("cl") else x, t, encoder_hidden_states=ctx).sample))

        def run() -> torch.Tensor:
            pred = call()
            F.mse_loss(pred.float(), noise).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return pred.detach()
        return run

    variants = {
        "diffusers fp32": (False, step("diffusers")),
        "ldmcore fp32": (False, step("ldmcore")),
        "diffusers bf16 autocast": (True, step("diffusers")),
        "diffusers bf16 autocast+cl": (True, step("diffusers cl")),
        "ldmcore bf16 autocast+cl": (True, step("ldmcore")),
    }
    out = compare(variants, reps)
    out["compared"] = "step-0 prediction"
    return {"batch": batch, **out}


def demo_step(reps: int) -> dict:
    """The demo's own training step (``experiment=demo``, in what ``precision=auto`` picks),
    channels_last on vs off: the same means applied to what ``make demo`` spends its time on.
    AdamW at lr 0 (the weights stay those of step 0) on one seeded batch."""
    precision = choose_precision("auto").name
    steps = {f"channels_last {'on' if cl else 'off'}": demo_training_step(
        precision, channels_last=cl, lr=0.0, batch_seed=4) for cl in (False, True)}
    s = alternate(steps, reps)
    return {"batch": demo_batch_size(), "precision": precision,
            "seconds": {k: round(v, 4) for k, v in s.items()},
            "speedup": round(s["channels_last off"] / s["channels_last on"], 2)}


def matmul_peak(reps: int) -> dict:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    calls = {"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16}
    clocks = alternate_clocks({k: v for k, v in calls.items() if kept(k)}, max(reps, 5))
    return {"n": n, **{("gflops" if clock == "wall" else "gflops_cpu_clock"):
                       {k: round(2 * n ** 3 / v / 1e9, 1) for k, v in s.items()}
                       for clock, s in clocks.items()}}


@torch.inference_mode()
def unet_flops(m: Models) -> float:
    """FLOPs of one batch-8 forward: counter (convs, matmuls) + attention cores analytically."""
    from torch.utils.flop_counter import FlopCounterMode

    from ldmcore.nn.attention import CrossAttention

    attn = [0]

    def hook(mod, args, kwargs):
        x = args[0]
        ctx = args[1] if len(args) > 1 else kwargs.get("context")
        kv = x if ctx is None else ctx
        attn[0] += 4 * x.shape[0] * x.shape[1] * kv.shape[1] * mod.heads * mod.head_dim

    handles = [mod.register_forward_pre_hook(hook, with_kwargs=True)
               for mod in m.unet32.modules() if isinstance(mod, CrossAttention)]
    counter = FlopCounterMode(display=False)
    with counter:
        m.unet32(*anchor.inputs(8))
    for h in handles:
        h.remove()
    return counter.get_total_flops() + attn[0]


def flops_table(gflop: float, peak: dict, unet_b8: dict) -> dict:
    """Achieved GFLOP/s of each batch-8 forward against the same clock's matmul peak (the CPU
    clock where both were measured on it: it leaves out time spent waiting for a core)."""
    clock = "cpu_seconds" if "cpu_seconds" in unet_b8 and "gflops_cpu_clock" in peak else "seconds"
    peaks = peak["gflops_cpu_clock" if clock == "cpu_seconds" else "gflops"]
    out = {"unet_b8_gflop": gflop, "clock": clock, "by_variant": {}}
    for name, sec in unet_b8[clock].items():
        if ("bf16" if "bf16" in name else "fp32") not in peaks:
            continue
        rate = gflop / sec
        out["by_variant"][name] = {"gflops": round(rate, 1),
                                   "of_peak": round(rate / peaks["bf16" if "bf16" in name else "fp32"], 3)}
    return out


def memory(threads: int, tasks: tuple[str, ...] = ("unet_b8", "train_step")) -> dict:
    """Peak RSS of one call per variant, each in a fresh child process."""
    out = {}
    for task in tasks:
        for variant in ("diffusers fp32", "ldmcore fp32", "diffusers bf16 autocast",
                        "diffusers bf16 autocast+cl", "ldmcore bf16"):
            if not kept(variant):
                continue
            if task == "train_step" and variant == "ldmcore bf16":
                variant = "ldmcore bf16 autocast+cl"
            cmd = [sys.executable, "-m", __spec__.name, "--peak", task, variant, "--threads", str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out.setdefault(task, {})[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def peak_child(task: str, variant: str) -> None:
    m = Models()
    if task == "unet_b8":
        with torch.inference_mode():
            ac, fn = unet_variants(m, *anchor.inputs(8))[variant]
            print(json.dumps(peak_rss_mib(lambda: _run(ac, fn))))
    else:
        x, t, ctx = anchor.inputs(8)
        net = (m.unet32 if variant.startswith("ldmcore") else
               m.d_unet_cl if variant.endswith("cl") else m.d_unet).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
        ac = "bf16" in variant
        xin = x.contiguous(memory_format=CL) if variant.endswith("cl") else x

        def step():
            with autocast(ac):
                out = net(xin, t, ctx) if variant.startswith("ldmcore") else \
                    net(xin, t, encoder_hidden_states=ctx).sample
            F.mse_loss(out.float(), torch.zeros_like(x)).backward()
            opt.step()
        print(json.dumps(peak_rss_mib(step)))


def markdown(result: dict) -> str:
    lines = [f"# ldmcore vs diffusers, same weights ({'quick' if result['quick'] else 'full'} run)", "",
             f"machine: {result['machine']}", "",
             f"command: `{result['command']}`", "",
             f"bf16 tolerance: max abs difference from the float32 reference at most "
             f"{BF16_TOLERANCE:.0%} of the reference's max abs value (float32 paths: 1e-4 absolute, "
             "the interop parity tolerance); the last column gives that relative difference.", "",
             "Speedup = diffusers' best median / ldmcore's (wall clock; the CPU-clock column "
             "uses this process's CPU time, steadier on a shared machine at one thread).", "",
             "| task | batch | diffusers fp32 s | ldmcore fp32 s | fp32 speedup | diffusers bf16 s "
             "(autocast / +cl / bf16 weights+cl) | ldmcore bf16 s | bf16 speedup | CPU-clock speedup fp32 / bf16 "
             "| ldmcore fp32 max abs diff / bf16 relative diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task in ("unet_b1", "unet_b8", "sample", "vae_decode", "train_step"):
        r = result.get(task)
        if not r:
            continue
        s, d, cpu = r["seconds"], r["max_abs_diff_vs_fp32"], r.get("speedup_cpu_clock", {})
        ours16 = next((k for k in s if k.startswith("ldmcore bf16") and "compiled" not in k), None)
        rel16 = f"{r['relative_diff_vs_fp32'][ours16]:.1%}" if ours16 else "-"
        lines.append(
            f"| {task} | {r['batch']} | {s['diffusers fp32']} | {s['ldmcore fp32']} | "
            f"{r['speedup'].get('fp32')}x | {s.get('diffusers bf16 autocast', '-')} / "
            f"{s.get('diffusers bf16 autocast+cl', '-')} / {s.get('diffusers bf16 weights+cl', '-')} | "
            f"{s.get(ours16, '-')} | {r['speedup'].get('bf16', '-')}x | "
            f"{cpu.get('fp32')}x / {cpu.get('bf16', '-')}x | {d['ldmcore fp32']:.1e} / {rel16} |")
    b8 = result.get("unet_b8", {})
    if "ldmcore bf16 compiled" in b8.get("seconds", {}):
        lines += ["", f"With `execution.compile` (inductor, freezing; {b8['compile_seconds']} s to "
                  f"compile): UNet batch 8 bf16 {b8['seconds']['ldmcore bf16 compiled']} s, "
                  f"{b8['speedup']['bf16_compiled']}x diffusers' best "
                  f"({b8.get('speedup_cpu_clock', {}).get('bf16_compiled')}x on the CPU clock), max abs diff "
                  f"{b8['max_abs_diff_vs_fp32']['ldmcore bf16 compiled']:.1e}."]
    if "by_variant" in result.get("flops", {}):
        f = result["flops"]
        peaks = result["matmul"]["gflops_cpu_clock" if f["clock"] == "cpu_seconds" else "gflops"]
        lines += ["", f"UNet forward, batch 8: {f['unet_b8_gflop']} GFLOP (convs and matmuls by "
                  "torch.utils.flop_counter, attention cores analytically). Matmul peak (2048^2, "
                  f"{'CPU' if f['clock'] == 'cpu_seconds' else 'wall'} clock like the rates below): "
                  f"{peaks['fp32']} GFLOP/s fp32, {peaks.get('bf16', '-')} GFLOP/s bf16.", "",
                  "| variant | GFLOP/s | of its dtype's matmul peak |", "|---|---|---|"]
        lines += [f"| {k} | {v['gflops']} | {v['of_peak']:.0%} |" for k, v in f["by_variant"].items()]
    if "demo_step" in result:
        d = result["demo_step"]
        lines += ["", f"`make demo`'s training step (batch {d['batch']}, {d.get('precision', 'bf16')}): channels_last "
                  f"off {d['seconds']['channels_last off']} s, on {d['seconds']['channels_last on']} s "
                  f"({d['speedup']}x)."]
    if "memory" in result:
        lines += ["", "Peak resident memory added by one call (MiB, fresh process each):", "",
                  "| task | variant | MiB |", "|---|---|---|"]
        lines += [f"| {task} | {v} | {mib} |" for task, vs in result["memory"].items()
                  for v, mib in vs.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 1 sample and decode, 2 rounds")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=None, help="rounds per task (default 5; quick 2)")
    ap.add_argument("--only", default=",".join(TASKS), help=f"comma-separated subset of {TASKS}")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile'd ldmcore bf16 at batch 8 (minutes to compile)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help="comma-separated subset of fp32,bf16 (default: fp32, and bf16 where the "
                         "CPU runs it natively)")
    ap.add_argument("--variant", default=None, help="results file stem (default full, or quick)")
    ap.add_argument("--peak", nargs=2, metavar=("TASK", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    PRECISIONS[:] = [p for p in args.precisions.split(",") if p in ("fp32", "bf16")] or ["fp32"]
    torch.set_num_threads(args.threads)
    if args.peak:
        peak_child(*args.peak)
        return
    only = set(args.only.split(","))
    if only - set(TASKS):
        ap.error(f"unknown task(s) {sorted(only - set(TASKS))}; valid: {', '.join(TASKS)}")
    reps = args.reps or (2 if args.quick else 5)
    small = 1 if args.quick else 4  # sample batch (the UNet sees twice that, CFG)
    result: dict = {"quick": args.quick, "command": " ".join(["python -m benchmarks.perf", *sys.argv[1:]]),
                    "machine": f"{machine_line()}; {args.threads} torch threads; precisions "
                               f"{', '.join(PRECISIONS)}; {load_average()}",
                    "anchor": {"unet_block_out_channels": anchor.UNET_WIDTHS,
                               "vae_block_out_channels": anchor.VAE_WIDTHS, "latent": anchor.LATENT,
                               "context": [anchor.CONTEXT_TOKENS, anchor.CONTEXT_DIM]}}
    m = Models()
    result["anchor"]["unet_parameters"] = anchor.parameter_count(m.unet32)
    steps = [("matmul", lambda: matmul_peak(reps)),
             ("unet_b1", lambda: unet_forward(m, 1, reps)),
             ("unet_b8", lambda: unet_forward(m, 8, reps, args.compile)),
             ("sample", lambda: sample(m, small, max(2, reps - 2))),
             ("vae_decode", lambda: vae_decode(m, 1, reps)),  # 256x256 px: seconds per image
             ("train_step", lambda: train_step(m, 8, reps)),
             ("demo_step", lambda: demo_step(reps))]
    for name, fn in steps:
        if name in only:
            result[name] = fn()
            print(name, json.dumps(result[name]), flush=True)
    if "flops" in only:
        result["flops"] = {"unet_b8_gflop": round(unet_flops(m) / 1e9, 2)}
    if "memory" in only:
        result["memory"] = memory(args.threads, ("unet_b8",) if args.quick else ("unet_b8", "train_step"))
    variant = args.variant or ("quick" if args.quick else "full")
    previous, _ = result_paths("perf", variant)
    if only != set(TASKS) and previous.exists():  # a subset run updates the earlier results
        merged = json.loads(previous.read_text())
        merged.update({k: v for k, v in result.items() if k in TASKS})
        merged["command"] = f"{merged['command']}; then {result['command']}"
        result = merged
    if {"flops", "matmul", "unet_b8"} <= set(result):
        result["flops"] = flops_table(result["flops"]["unet_b8_gflop"], result["matmul"], result["unet_b8"])
    write_result("perf", variant, result, markdown(result))


if __name__ == "__main__":
    main()

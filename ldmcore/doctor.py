"""``ldm doctor``: what a bug report needs to know about this machine and this install.

Versions (ldmcore, torch, CUDA, Python), devices, the CPU's instruction sets (AVX2, AVX-512,
AMX), what ``precision=auto`` and ``threads=auto`` pick here and why, a short matmul
measurement in float32 and bf16 on each device, and the installed plugins (broken ones with
the reason). ``--json`` gives the same as one JSON object.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from typing import Any

import torch

import ldmcore
from ldmcore.hardware import choose_precision, choose_threads, cpu_info
from ldmcore.errors import ConfigError
from ldmcore.hardware.measure import matmul_rate
from ldmcore.registry import default_registry


def _devices() -> list[torch.device]:
    cuda = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu"), *cuda]


def _device_report(device: torch.device, seconds: float) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        about: dict[str, Any] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                                 "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        about = {"name": cpu_info().model}
    precision = choose_precision("auto", device)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        rate = matmul_rate(dtype, seconds / 2, size=2048 if device.type == "cuda" else 256, device=device)
        rates[rate.dtype] = {"gflops": round(rate.gflops, 1), "size": rate.size,
                             "repetitions": rate.repetitions}
    return {"device": str(device), **about, "precision_auto": precision.name,
            "precision_reason": precision.reason, "matmul": rates}


def _plugins() -> dict[str, Any]:
    try:
        reg = default_registry()
    except Exception as exc:  # noqa: BLE001 - the report must come out whatever the plugins do
        return {"error": f"{type(exc).__name__}: {exc}", "installed": [], "broken": {}}
    return {"installed": [asdict(i) for i in reg.infos()], "broken": dict(reg.broken)}


def report(seconds: float = 1.0) -> dict[str, Any]:
    """Everything ``ldm doctor`` prints; ``seconds`` bounds each device's matmul measurement."""
    cpu = cpu_info()
    threads = choose_threads("auto")
    return {
        "ldmcore": ldmcore.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpu": {**asdict(cpu), "torch_default_threads": torch.get_num_threads()},
        "threads_auto": threads.threads, "threads_reason": threads.reason,
        "devices": [_device_report(d, seconds) for d in _devices()],
        "plugins": _plugins(),
    }


def format_report(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    yes = {True: "yes", False: "no"}
    lines = [
        f"ldmcore {r['ldmcore']}  python {r['python']}  torch {r['torch']}  "
        f"CUDA {r['cuda'] or 'none (CPU build)'}{' (available)' if r['cuda_available'] else ''}",
        f"platform: {r['platform']}",
        f"cpu: {cpu['model']}, {cpu['cores']} cores for this process; torch kernels: {cpu['capability']}",
        f"  AVX2 {yes[cpu['avx2']]}  AVX-512 {yes[cpu['avx512']]}  AVX-512-BF16 {yes[cpu['avx512_bf16']]}  "
        f"AMX {yes[cpu['amx']]}  -> bf16 {'native' if cpu['native_bf16'] else 'emulated'} ({cpu['bf16_note']})",
        f"threads=auto: {r['threads_auto']} ({r['threads_reason']})",
    ]
    for d in r["devices"]:
        mm = d["matmul"]
        speed = ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s" for k, v in mm.items())
        ratio = mm["bfloat16"]["gflops"] / max(mm["float32"]["gflops"], 1e-9)
        lines += [f"device {d['device']}: {d['name']}",
                  f"  precision=auto: {d['precision_auto']} ({d['precision_reason']})",
                  f"  matmul {mm['float32']['size']}^2: {speed} (bf16/fp32 = {ratio:.2f})"]
    plugins = r["plugins"]
    names = ", ".join(f"{p['name']} ({p['package']} {p['version']})" for p in plugins["installed"])
    lines.append(f"plugins: {names or 'none'}")
    if plugins.get("error"):
        lines.append(f"plugins could not be listed: {plugins['error']}")
    lines += [f"broken plugin: {k}: {v}" for k, v in sorted(plugins["broken"].items())]
    return "\n".join(lines)


def main(args: list[str]) -> int:
    import json

    unknown = [a for a in args if a != "--json"]
    if unknown:
        raise ConfigError(f"ldm doctor takes only --json, not {unknown[0]!r}.")
    r = report()
    print(json.dumps(r, indent=1) if "--json" in args else format_report(r))
    sys.stdout.flush()
    return 0
